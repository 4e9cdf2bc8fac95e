"""The /proc/cpuinfo an emulated aarch64 guest reads: the pinned core's, not the build host's.

qemu 7.2's linux-user passes the host's x86 /proc/cpuinfo through, so XNNPACK (LiteRT's default kernels) cannot
tell which ARM core it runs on and picks kernels no real cortex-a76 or cortex-a53 would run: measured, fp32 took up
to 4.6% fewer instructions than with the core's own cpuinfo. qemu looks up every absolute path the guest opens
under its -L prefix first, so each core gets a prefix of its own: the arm64 rootfs, hard-linked file by file (no
space; symlinks to its top-level directories would not do: the guest resolving a host path such as /tmp/... or
/root/... would follow /tmp to the rootfs's), plus a proc/cpuinfo with that core's lines (guest_cpuinfo.json: what
qemu 10, which emulates the file, shows under -cpu CORE). Every other /proc path falls through to the real one.
"""

import json
import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path

SOURCE = Path(__file__).with_name("guest_cpuinfo.json")
VERSION = 1  # in the executor's identity: a change to these files changes what the kernels pick


@lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(SOURCE.read_text())


def text(core: str, processors: int) -> str:
    """/proc/cpuinfo for `processors` cores of this model (as many as the host has: /sys, which the guest also
    reads, counts the host's)."""
    block = _table()["cores"][core]
    return "".join(f"processor\t: {i}\n{block}\n\n" for i in range(processors))


def prefix(root: Path, core: str) -> Path:
    """ROOT/cores/CORE: the -L prefix for this core, made again when the rootfs or the cpuinfo changes (atomically:
    builds run cores side by side)."""
    rootfs = Path(root) / "rootfs"
    done = rootfs / ".toolchain-done"  # rewritten whenever the setup makes the rootfs again
    made = os.stat(done if done.exists() else rootfs)
    want = f"rootfs {made.st_ino} {made.st_mtime_ns}\n" + text(core, os.cpu_count() or 1)
    dest = Path(root) / "cores" / core
    if _stamp(dest) == want:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{core}.{uuid.uuid4().hex}.tmp")  # processes and threads make these side by side
    shutil.copytree(rootfs, tmp, symlinks=True, copy_function=os.link)
    (tmp / "proc").mkdir(exist_ok=True)
    (tmp / "proc" / "cpuinfo").write_text(want.split("\n", 1)[1])
    (tmp / STAMP).write_text(want)
    try:
        os.rename(tmp, dest)
    except OSError:  # another process made it first, or an older one is there: replace the older one
        shutil.rmtree(tmp)
        if _stamp(dest) == want:
            return dest
        old = dest.with_name(f".{core}.{uuid.uuid4().hex}.old")
        os.rename(dest, old)
        shutil.rmtree(old)
        return prefix(root, core)
    return dest


STAMP = ".toolchain-prefix"


def _stamp(dest: Path) -> str:
    try:
        return (dest / STAMP).read_text()
    except OSError:
        return ""
