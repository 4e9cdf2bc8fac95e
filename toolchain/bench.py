"""`make bench`: the figures the issues ask for, printed with their goals. Not a test: timings drift up to
50% between runs on small shared machines, so every comparison is interleaved in one process and quoted as
a ratio.

    python -m toolchain.bench [--build-dir build] [--no-build] [--only x86_64,arm64,plans,prune,cuda,make,suite,cluster]
                              [--suite mobilenet_v3_small,resnet18,unet_small,minilm_seq128] [--suite-no-arm]

`suite`: the real-size models side by side with the peers (bench_suite.py), built into BUILD/bench-suite.
`cluster`: a cold build locally vs on a two-worker local Dask cluster, and a paper estimate (bench_cluster.py).
"""

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODELS = ("digits_cnn", "digits_resnet", "digits_mobilenet")
OPTIONAL = ("digits_resnet_pruned", "minilm")  # benched when built
# what `make build` builds, in the Makefile's order (longest first)
MAKE_MODELS = ("minilm", "digits_resnet_pruned", "digits_mobilenet", "digits_resnet", "shapes_detector", "digits_cnn")
SUITE_MODELS = ("mobilenet_v3_small", "resnet18", "unet_small", "minilm_seq128")  # bench_models.SUITE


def _spec(model):
    return REPO / "sample_models" / model / "build.toml"


def _line(label, value, goal=None, ok=None):
    mark = "" if ok is None else ("  [meets goal]" if ok else "  [MISSES goal]")
    print(f"  {label:<46} {value}{'  (goal ' + goal + ')' if goal else ''}{mark}")


def _report(build_dir, model):
    return json.loads((Path(build_dir) / model / "report.json").read_text())


def ensure_built(build_dir, models, targets=None):
    from .api import build

    for m in models:
        build(_spec(m), build_dir, targets=targets)


def _interleaved(target, a_path, b_path, feed, runs, warmup=50, options=None):
    from .runtimes import open_artifact
    from .validation.latency import interleaved

    a = open_artifact(target, a_path)
    b = open_artifact(target, b_path)
    return interleaved({"a": a.timer(feed), "b": b.timer(feed)}, warmup, runs)


def _eval_feed(spec, batch):
    from .data import load_arrays

    ev = load_arrays(spec.evaluation, spec, "evaluation")
    names = [t.name for t in spec.inputs]
    n = len(ev[names[0]])
    idx = np.arange(batch) % n
    return {k: ev[k][idx] for k in names}


def bench_cpu_target(build_dir, name, goals, runs=1000):
    from .spec import load_spec
    from .targets import load_target

    print(f"\n== {name} (batch 1, one thread, {runs} interleaved runs) ==")
    for model in MODELS + tuple(m for m in OPTIONAL if m in goals and (Path(build_dir) / m / "report.json").is_file()):
        r = _report(build_dir, model)
        t = r["targets"].get(name)
        if not t or "artifact" not in t:
            print(f"  {model}: not built ({t.get('reason') if t else 'no entry'})")
            continue
        spec = load_spec(_spec(model), need_weights=False)
        target = load_target(name, None, spec.targets[name].overrides)
        md = Path(build_dir) / model
        lat = _interleaved(target, md / t["artifact"], md / t["baseline"], _eval_feed(spec, 1), runs)
        ratio = lat["a"]["p50"] / lat["b"]["p50"]
        print(f" {model}: status {t['status']}")
        g = goals.get(model, {})
        _line("metric drop (points)", f"{t['metric_drop']:.3f}", g.get("drop") and f"<= {g['drop']}",
              t["metric_drop"] <= g["drop"] if "drop" in g else None)
        _line(f"p50 {t['precision']} / fp32 baseline", f"{lat['a']['p50']:.4f} / {lat['b']['p50']:.4f} ms = "
              f"{ratio:.2f}x", g.get("speed") and f"<= {g['speed']}x", ratio <= g["speed"] if "speed" in g else None)
        _line("size / fp32 baseline", f"{t['size_bytes']} / {t['baseline_size_bytes']} B = {t['size_ratio']:.2f}x",
              g.get("size") and f"<= {g['size']}x", t["size_ratio"] <= g["size"] if "size" in g else None)
        if "cosine" in g:
            cos = min(a["cosine_mean"] for a in t["agreement"].values())
            _line("output cosine to fp32 PyTorch (mean)", f"{cos:.4f}", f">= {g['cosine']}", cos >= g["cosine"])


def bench_plans(build_dir):
    """Before and after each precision plan, from the build reports (the plan times its variants interleaved
    with fp32 in the build)."""
    print("\n== precision plans (before = every node int8; from the build reports) ==")
    for model in MODELS + OPTIONAL:
        if not (Path(build_dir) / model / "report.json").is_file():
            continue
        for name, t in _report(build_dir, model)["targets"].items():
            plan = (t.get("build") or {}).get("plan")
            if not plan:
                continue
            b, a = plan["before"], plan["after"]
            kept = len(plan["kept_float"])
            if "fp32_p50_ms" in plan:
                fp = plan["fp32_p50_ms"]
                print(f"  {model}/{name}: before drop {b['metric_drop']:.3f}, p50 {b['p50_ms'] / fp:.2f}x fp32 -> "
                      f"after ({plan['chosen']}, {kept} node(s) float) drop {a['metric_drop']:.3f}, "
                      f"p50 {a['p50_ms'] / fp:.2f}x fp32")
            else:
                print(f"  {model}/{name}: before ({b['plan']}) drop {b['metric_drop']:.3f} -> after "
                      f"({plan['chosen']}, {kept} op(s) float) drop {a['metric_drop']:.3f}; "
                      f"full integer: {plan['full_integer']}")


def bench_cuda(build_dir, batches=(1, 8, 64), runs=300):
    from .runtimes.onnxruntime import OrtSession, available_providers, device_name
    from .spec import load_spec
    from .validation.latency import interleaved

    print("\n== cuda (fp16 vs fp32 ONNX, CUDA provider, I/O binding, interleaved) ==")
    if "CUDAExecutionProvider" not in available_providers():
        print(f"  skipped: CUDAExecutionProvider not available (providers: {', '.join(available_providers())})")
        return
    print(f"  device: {device_name('CUDAExecutionProvider')}")
    variants = {
        "default": {},
        "cuda_graph": {"enable_cuda_graph": "1"},
        "nhwc+exhaustive": {"prefer_nhwc": "1", "cudnn_conv_algo_search": "EXHAUSTIVE"},
    }
    for model in MODELS + tuple(m for m in OPTIONAL if (Path(build_dir) / m / "report.json").is_file()):
        r = _report(build_dir, model)
        t = r["targets"].get("cuda")
        if not t or "artifact" not in t:
            print(f"  {model}: not built")
            continue
        md = Path(build_dir) / model
        spec = load_spec(_spec(model), need_weights=False)
        print(f" {model}: status {t['status']}, metric drop {t.get('metric_drop', float('nan')):.3f} points "
              "(goal <= 0.2)")
        for b in batches:
            feed = _eval_feed(spec, b)
            calls, sessions = {}, []
            for vname, opts in variants.items():
                for prec, path in (("fp16", md / t["artifact"]), ("fp32", md / t["baseline"])):
                    s = OrtSession(path, ["CUDAExecutionProvider"], 1,
                                   provider_options={"CUDAExecutionProvider": opts}, io_binding=True)
                    sessions.append(s)
                    calls[(vname, prec)] = s.timer(feed)
            lat = interleaved(calls, 50, runs)
            base = lat[("default", "fp32")]["p50"]
            row = ", ".join(f"{v}/{p} {lat[(v, p)]['p50']:.4f} ms ({lat[(v, p)]['p50'] / base:.2f}x)"
                            for v in variants for p in ("fp16", "fp32"))
            print(f"   batch {b:>3}: {row}")
        print("   (ratios vs default-options fp32 at the same batch; goal: fp16 p50 <= fp32 p50)")


def bench_prune(build_dir, model="digits_resnet_pruned"):
    """The pruned sample against its unpruned self: figures from its build report (speedups measured
    interleaved in that build, pruned vs unpruned artifact of the same target)."""
    print(f"\n== prune ({model}: 50% of channels, recovered by distillation) ==")
    path = Path(build_dir) / model / "report.json"
    if not path.is_file():
        print(f"  not built (make build builds it)")
        return
    r = json.loads(path.read_text())
    p = r["prune"]
    drop = p["metric_before"] - p["metric_after_recovery"]  # unpruned fp32 PyTorch vs pruned, recovered
    _line("metric drop after recovery vs unpruned fp32", f"{drop:.3f} ({p['metric_after_prune']:.2f} right after "
          "pruning)", "<= 1.0", drop <= 1.0)
    _line("params after / before", f"{p['params_after'] / p['params_before']:.3f}x", "<= 0.35x",
          p["params_after"] / p["params_before"] <= 0.35)
    _line("MACs after / before", f"{p['macs_after'] / p['macs_before']:.3f}x", "<= 0.35x",
          p["macs_after"] / p["macs_before"] <= 0.35)
    for t in ("x86_64", "arm64"):
        s = r["targets"].get(t, {}).get("speedup_vs_unpruned")
        if s:
            _line(f"{t} int8 p50 pruned / unpruned", f"{1 / s:.3f}x", "<= 0.6x", 1 / s <= 0.6)


# "unpruned ": a pruned sample's unpruned twin (built by whichever build gets there first, then cached)
STAGE_DONE = re.compile(r"^\[(?P<model>[^\]]+)\] (?:unpruned )?(?P<stage>[a-z_0-9]+)(?:\[(?P<target>[^\]]+)\])?"
                        r"\s+done\s+(?P<s>[0-9.]+)s")


def stage_times(progress_text: str) -> list:
    """(model, stage, target, seconds) for each stage a build ran, from its progress lines (cached stages and
    heartbeats say no `done`)."""
    out = []
    for line in progress_text.splitlines():
        m = STAGE_DONE.match(line)
        if m:
            out.append((m["model"], m["stage"], m["target"], float(m["s"])))
    return out


def bench_make(models=MAKE_MODELS, jobs=2):
    """Cold build of every sample for all targets (fresh cache, no shared cache), `jobs` models at a time (what
    `make -j2 build` does on a 2-core machine), where its time goes per stage (from the builds' progress lines),
    then no-op builds (median of 10) and the peak memory of the build processes (converter children included)."""
    import resource
    import shutil
    import subprocess
    import tempfile
    import time

    exe = [sys.executable, "-m", "toolchain.cli", "build"]
    print(f"\n== make manners (fresh cache, all targets, {jobs} models at a time) ==")
    tmp = Path(tempfile.mkdtemp(prefix="toolchain-bench-"))
    try:
        t0 = time.perf_counter()
        queue, running, logs, walls, codes = list(models), {}, {}, {}, {}
        while queue or running:
            while queue and len(running) < jobs:
                m = queue.pop(0)
                logs[m] = open(tmp / f"{m}.progress", "w+")
                running[m] = (subprocess.Popen([*exe, str(_spec(m)), "-o", str(tmp / "out"), "--cache", ""],
                                               stdout=subprocess.DEVNULL, stderr=logs[m]), time.perf_counter())
            time.sleep(0.5)
            for m, (proc, started) in list(running.items()):
                if proc.poll() is not None:
                    walls[m], codes[m] = time.perf_counter() - started, proc.returncode
                    del running[m]
        cold = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        _line(f"cold build, {len(models)} samples x all targets", f"{cold:.1f} s wall on {jobs} parallel builds",
              "<= 240 s", cold <= 240)
        _line("peak RSS of one build process (incl. children)", f"{peak_mb:.0f} MiB")
        rows = []
        for m in models:
            logs[m].seek(0)
            rows += stage_times(logs[m].read())
            logs[m].close()
            _line(f"  {m}", f"{walls[m]:.1f} s (exit {codes[m]})")
        by_stage = {}
        for _, stage, _, sec in rows:
            by_stage[stage] = by_stage.get(stage, 0.0) + sec
        total = sum(by_stage.values()) or 1.0
        print("  where the time goes (stage seconds summed over models and targets; stages of parallel builds "
              "overlap, so the sum exceeds the wall time):")
        for stage, sec in sorted(by_stage.items(), key=lambda kv: -kv[1]):
            print(f"    {stage:<16} {sec:7.1f} s  {sec / total:5.1%}")
        print("  longest stages: " + ", ".join(f"{m}/{st}{'[' + t + ']' if t else ''} {sec:.0f} s"
                                              for m, st, t, sec in sorted(rows, key=lambda r: -r[3])[:6]))
        for m in models:
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                subprocess.run([*exe, str(_spec(m)), "-o", str(tmp / "out"), "-q", "--cache", ""], check=False,
                               capture_output=True)
                times.append(time.perf_counter() - t0)
            med = float(np.median(times))
            _line(f"no-op build {m} (median of 10, wall)", f"{med:.3f} s", "<= 0.5 s", med <= 0.5)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--build-dir", default=str(REPO / "build"))
    ap.add_argument("--no-build", action="store_true", help="use the artifacts already in the build dir")
    ap.add_argument("--only", default="x86_64,arm64,plans,prune,cuda,make,suite,cluster")
    ap.add_argument("--suite", default=",".join(SUITE_MODELS), help="suite models to bench")
    ap.add_argument("--suite-no-arm", action="store_true", help="x86 only for the suite (no arm64 builds)")
    ap.add_argument("--suite-runs", type=int, default=200)
    ap.add_argument("--cluster-models", default=",".join(MODELS + OPTIONAL),
                    help="samples of the cluster section (bench_cluster.py)")
    args = ap.parse_args(argv)
    only = args.only.split(",")
    if not args.no_build:
        ensure_built(args.build_dir, MODELS)
    if "x86_64" in only:
        bench_cpu_target(args.build_dir, "x86_64", {"digits_resnet": {"drop": 0.5, "speed": 0.4, "size": 0.3},
                                                    "digits_mobilenet": {"drop": 0.5, "speed": 0.9},
                                                    "minilm": {"speed": 0.5, "cosine": 0.99}})
    if "arm64" in only:
        bench_cpu_target(args.build_dir, "arm64", {"digits_cnn": {"drop": 1.0, "size": 0.3},
                                                   "digits_resnet": {"drop": 1.0, "speed": 0.6, "size": 0.3}})
    if "plans" in only:
        bench_plans(args.build_dir)
    if "prune" in only:
        bench_prune(args.build_dir)
    if "cuda" in only:
        bench_cuda(args.build_dir)
    if "suite" in only:
        from . import bench_suite

        bench_suite.bench(Path(args.build_dir) / "bench-suite", [m for m in args.suite.split(",") if m],
                          runs=args.suite_runs, arm=not args.suite_no_arm)
    if "make" in only:
        bench_make()
    if "cluster" in only:
        from . import bench_cluster

        bench_cluster.bench([m for m in args.cluster_models.split(",") if m])
    return 0


if __name__ == "__main__":
    sys.exit(main())
