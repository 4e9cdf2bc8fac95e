"""`toolchain worker`: a plain `dask worker` with the project's environment (this Python, so the toolchain and its
pinned libraries import) and defaults for build stages. It replaces this process (signals reach Dask directly).

    toolchain worker --scheduler tcp://HOST:8786 --resources arm64=1
  = python -m distributed.cli.dask_worker tcp://HOST:8786 --resources "arm64=1" --nthreads 1 \\
        --memory-limit 0.75 --dashboard-address 127.0.0.1:0 --name HOSTNAME-arm64
Why these defaults: one stage at a time per worker (stages use every core themselves, and a latency measured next
to another stage is noise); Dask's automatic memory limit is RAM x threads / cores, far too small for a torch or
TensorFlow stage at one thread, so the limit is a share of the machine's RAM; the dashboard listens on loopback only.
"""

import os
import platform
import sys

from . import ClusterUsageError, RESOURCE_NAME, check_address, resolve_scheduler
from .task import CACHE_ENV


def parse_resources(items) -> dict:
    """("arm64=1", "cuda") -> {"arm64": 1.0, "cuda": 1.0}; one line naming a bad item otherwise."""
    out = {}
    for item in items:
        for part in item.replace(",", " ").split():
            name, _, amount = part.partition("=")
            try:
                value = float(amount) if amount else 1.0
            except ValueError:
                value = -1
            if not RESOURCE_NAME.fullmatch(name) or value <= 0:
                raise ClusterUsageError(f"--resources {part!r}: expected NAME=AMOUNT, e.g. arm64=1")
            out[name] = value
    return out


def argv(scheduler, resources: dict, name=None, nthreads=1, memory_limit="0.75",
         dashboard_address="127.0.0.1:0", extra=()) -> list:
    address = resolve_scheduler(scheduler)
    if address is None:
        raise ClusterUsageError("toolchain worker: no scheduler (--scheduler tcp://HOST:PORT or $TOOLCHAIN_SCHEDULER)")
    check_address(address)
    label = "-".join(sorted(resources)) or "any"
    cmd = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", str(nthreads),
           "--memory-limit", str(memory_limit), "--dashboard-address", dashboard_address,
           "--name", name or f"{platform.node()}-{label}-{os.getpid()}"]
    if resources:
        cmd += ["--resources", " ".join(f"{k}={v:g}" for k, v in resources.items())]
    return cmd + list(extra)


def exec_worker(cmd: list, cache_dir=None):
    env = dict(os.environ)
    if cache_dir:
        env[CACHE_ENV] = os.path.abspath(cache_dir)
    os.execve(cmd[0], cmd, env)
