"""`make bench` section `cluster`: a cold build of samples in this process (one model after the other) vs on a
two-worker Dask cluster of real `toolchain worker` processes on 127.0.0.1 (fresh caches both, the cluster's through
a shared file:// cache), whether their artifacts are the same bytes, and a paper estimate for 100 models x 3
targets on N workers from the stage times the local build measured.

    python -m toolchain.bench --no-build --only cluster [--cluster-models digits_cnn,digits_resnet]
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Both workers run any stage; each also offers the resources of the sample targets' validates (cuda: this
# machine's validate skips without a GPU, as a local build's does).
WORKERS = {"w1": "x86_64=1 cuda=1", "w2": "x86_64=1 arm64=1"}
TASK_OVERHEAD_S = 0.3  # per node, when no node ran on the cluster to measure it (it is measured and printed)


def _spec(model):
    return REPO / "sample_models" / model / "build.toml"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(models, out, extra, log):
    cmd = [sys.executable, "-m", "toolchain.cli", "build", *map(str, map(_spec, models)), "-o", str(out), *extra]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - t0, code


def _digests(out, models):
    d = {}
    for m in models:
        r = json.loads((out / m / "report.json").read_text())
        d[(m, "fp32")] = r["fp32_onnx"]["sha256"]
        for t, e in r["targets"].items():
            d[(m, t)] = e.get("sha256")
    return d


def bench(models):
    from .bench import _line, stage_times

    print(f"\n== cluster: cold build of {', '.join(models)} locally vs on a two-worker local Dask cluster ==")
    tmp = Path(tempfile.mkdtemp(prefix="toolchain-bench-cluster-"))
    procs = []
    try:
        local_s, local_code = _build(models, tmp / "local", ["--cache", ""], tmp / "local.log")
        _line("local, one process, models in turn", f"{local_s:.1f} s wall (exit {local_code})")
        port = _free_port()
        address = f"tcp://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                       "--port", str(port), "--dashboard-address", "127.0.0.1:0"],
                                      stdout=subprocess.DEVNULL, stderr=open(tmp / "scheduler.log", "w"), env=env))
        for name, res in WORKERS.items():
            (tmp / name).mkdir()
            cmd = [sys.executable, "-m", "toolchain.cli", "worker", "--scheduler", address, "--name", name,
                   *[a for r in res.split() for a in ("--resources", r)], "--host", "127.0.0.1",
                   "--local-directory", str(tmp / name)]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "w"),
                                          env=env))
        from distributed import Client

        t0 = time.perf_counter()
        with Client(address, timeout=60, set_as_default=False) as c:
            c.wait_for_workers(len(WORKERS), timeout=120)
        _line("cluster start (scheduler + 2 worker processes)", f"{time.perf_counter() - t0:.1f} s")
        (tmp / "shared").mkdir()
        cluster_s, cluster_code = _build(models, tmp / "cluster", ["--scheduler", address, "--cache",
                                                                   (tmp / "shared").as_uri()], tmp / "cluster.log")
        _line("cluster, 2 workers, models at once", f"{cluster_s:.1f} s wall (exit {cluster_code}) = "
              f"{cluster_s / local_s:.2f}x local")
        same = _digests(tmp / "local", models) == _digests(tmp / "cluster", models)
        _line("artifacts (fp32 ONNX + every target)", "same bytes" if same else "DIFFER", "same bytes", same)
        rows = stage_times((tmp / "local.log").read_text())
        overhead = _task_overhead(tmp / "cluster", models, rows)
        where = {}
        for m in models:
            for label, n in json.loads((tmp / "cluster" / m / "report.json").read_text())["cluster"]["nodes"].items():
                if label.startswith("validate"):
                    where[f"{m}/{label}"] = n["worker"]
        print("  validates ran on: " + ", ".join(f"{k} {v}" for k, v in sorted(where.items())))
        estimate(rows, overhead)
    finally:
        from .executors.process import stop_gracefully

        for p in reversed(procs):
            stop_gracefully(p)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _task_overhead(out, models, local_rows):
    """What running a node as a task adds, measured on the workers: the task's seconds minus its stage's (a fresh
    pipeline from the spec, inputs pulled from the shared cache); and, for comparison, how much slower the stages
    themselves ran on the workers than locally (two workers share this machine's cores)."""
    import statistics

    local = {(m, s, t): sec for m, s, t, sec in local_rows}
    setup, slower = [], []
    for m in models:
        for label, n in json.loads((out / m / "report.json").read_text())["cluster"]["nodes"].items():
            stage, _, target = label.partition("[")
            k = (m, stage, target.rstrip("]") or None)
            if n["ran"]:
                setup.append(n["seconds"] - n["stage_seconds"])
                if k in local and local[k] > 0:
                    slower.append(n["stage_seconds"] / local[k])
    if not setup:
        return TASK_OVERHEAD_S
    from .bench import _line

    med = statistics.median(setup)
    _line("task set-up per node on a worker (median)", f"{med:.2f} s over {len(setup)} nodes (max {max(setup):.2f})")
    if slower:
        _line("stage time on a worker / local (median)", f"{statistics.median(slower):.2f}x")
    return max(med, 0.0)


def estimate(rows, overhead_s, models=100, targets=3, workers=(1, 4, 16, 64)):
    """Paper estimate from the measured per-stage times: 100 models x 3 targets on N workers (each offering every
    resource). Work W = models x (mean shared stages per model + mean per-target chain x targets) plus the per-node
    overhead; the wall time is at least W / N and at least one model's critical path (its shared stages, then its
    longest target chain)."""
    shared, chains = {}, {}
    for m, stage, target, sec in rows:
        if target is None:
            shared[m] = shared.get(m, 0.0) + sec
        else:
            chains.setdefault(m, {}).setdefault(target, 0.0)
            chains[m][target] += sec
    if not shared:
        print("  (no stage times measured: no estimate)")
        return
    ms = list(shared)
    mean_shared = sum(shared.values()) / len(ms)
    mean_chain = sum(sum(c.values()) / max(len(c), 1) for c in chains.values()) / max(len(chains), 1)
    longest = max(shared[m] + max(chains.get(m, {0: 0}).values()) for m in ms)
    nodes_per_model = 2 + 2 * targets  # trace, reference; per target: its transform and its validate
    work = models * (mean_shared + targets * mean_chain + nodes_per_model * overhead_s)
    print(f"  paper estimate, {models} models x {targets} targets (from the local stage times of {', '.join(ms)}):")
    print(f"    per model: shared stages {mean_shared:.1f} s + {targets} x target chain {mean_chain:.1f} s + "
          f"{nodes_per_model} nodes x {overhead_s:.2f} s overhead = "
          f"{mean_shared + targets * mean_chain + nodes_per_model * overhead_s:.1f} s of work")
    print(f"    total work W = {models} x that = {work:.0f} s; critical path of one model = {longest:.1f} s")
    for n in workers:
        wall = max(work / n, longest)
        print(f"    N = {n:>3} workers: max(W / N, critical path) = {wall:7.0f} s ({wall / 60:.1f} min)")
    # validate runs only where its resource is (the built-in targets: the resource is the target's name)
    pinned = {}
    for m, stage, target, sec in rows:
        if stage == "validate" and target:
            pinned.setdefault(target, []).append(sec)
    for target, secs in sorted(pinned.items()):
        total = models * sum(secs) / len(secs)
        print(f"    validate[{target}] needs its resource: {models} x {total / models:.1f} s = {total:.0f} s, so at "
              "least " + ", ".join(f"{total / a / 60:.1f} min on {a}" for a in (1, 4, 16)) + " such workers")
