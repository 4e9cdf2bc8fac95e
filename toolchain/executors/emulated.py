"""Emulated aarch64: the entry point runs on an arm64 Debian python under qemu-user, so LiteRT runs its real ARM
kernels (XNNPACK's NEON/dotprod paths, the builtin kernels). `toolchain arm-emulator` (or `make arm-emulator` in a
checkout) prepares ROOT (emulator_dir()).

The cpu is always pinned (-cpu cortex-a76, ...): qemu's default `max` offers SVE/SME, which LiteRT then uses.
binfmt_misc is not assumed, so the emulated python never starts other processes. With count=True the dynamic
qemu-aarch64 loads the instruction-count plugin (qemu-aarch64-static rejects -plugin) and RunResult.counts holds
the instructions between each pair of the entry point's markers.
"""

import json
import os
import shutil
from functools import cached_property
from pathlib import Path

from . import guest_cpuinfo, process
from .base import Executor, ExecutorUnavailable, RunResult
from .local import ENTRY, child_env, stage_files

PLUGIN = "plugin/libinsn_marker.so"


def checkout_root():
    """The source checkout this package runs from (editable install, PYTHONPATH), or None when installed."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "Makefile").is_file() and (root / "pyproject.toml").is_file() else None


def emulator_dir() -> Path:
    """$TOOLCHAIN_ARM_EMULATOR, else the checkout's .arm-emulator (what make and CI prepare), else a per-user cache
    directory (an installed package's own directory may not even be writable)."""
    env = os.environ.get("TOOLCHAIN_ARM_EMULATOR")
    if env:
        return Path(env)
    if checkout := checkout_root():
        return checkout / ".arm-emulator"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "toolchain" / "arm-emulator"


def setup_hint() -> str:
    """What to run to prepare the emulator, for the messages that say it is missing."""
    return "run `toolchain arm-emulator`" + (" or make arm-emulator" if checkout_root() else "")


class EmulatedExecutor(Executor):
    name = "emulated"

    def __init__(self, root=None):
        self.root = Path(root) if root else emulator_dir()

    @cached_property
    def ready(self) -> dict:
        try:
            return json.loads((self.root / "ready.json").read_text())
        except (OSError, ValueError):
            return {}

    @property
    def python(self) -> Path:
        return self.root / "rootfs" / "usr" / "bin" / (self.ready.get("python") or "python3.11")

    def check(self, count=False):
        if not self.ready or not self.python.exists():
            raise ExecutorUnavailable("emulated aarch64 executor", f"not set up in {self.root} ({setup_hint()})")
        need = ["qemu-aarch64"] if count else ["qemu-aarch64-static"]
        for exe in need:
            if not shutil.which(exe):
                raise ExecutorUnavailable("emulated aarch64 executor",
                                          f"{exe} is not installed ({setup_hint()})")
        if count and not (self.root / PLUGIN).is_file():
            raise ExecutorUnavailable("emulated aarch64 executor", f"the instruction-count plugin {self.root / PLUGIN} "
                                      f"is missing ({setup_hint()})")

    def can_count(self) -> bool:
        try:
            self.check(count=True)
            return True
        except ExecutorUnavailable:
            return False

    def identity(self) -> dict:
        return {"name": "emulated", "arch": "aarch64", **self.ready, "guest_cpuinfo": guest_cpuinfo.VERSION}

    def run(self, job, files, out_dir, timeout_s, cpu="cortex-a76", count=False) -> RunResult:
        self.check(count)
        stage_files(job, files, out_dir)
        out_dir = Path(out_dir)
        counts_file = out_dir / "counts.txt"
        qemu = [shutil.which("qemu-aarch64"), "-plugin", f"{self.root / PLUGIN},out={counts_file}"] if count \
            else [shutil.which("qemu-aarch64-static")]
        # -L: the rootfs, seen through a prefix whose /proc/cpuinfo is the pinned core's (guest_cpuinfo.py)
        cmd = [*qemu, "-cpu", cpu, "-L", str(guest_cpuinfo.prefix(self.root, cpu)), str(self.python), str(ENTRY),
               "job.json"]
        env = child_env({"PYTHONPATH": str(self.root / "site"), "PYTHONHASHSEED": "0"})  # same code path each run
        process.run(cmd, f"emulated aarch64 executor (qemu -cpu {cpu})", timeout_s, env=env, cwd=out_dir)
        counts = {}
        if count:
            for line in counts_file.read_text().split("\n"):
                if line.strip():
                    seg, n = line.split()
                    counts[seg] = int(n)
        return RunResult(json.loads((out_dir / job["result"]).read_text()), out_dir, counts)
