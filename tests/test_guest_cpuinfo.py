"""executors/guest_cpuinfo.py: each pinned core gets a qemu -L prefix (the arm64 rootfs, hard-linked) whose
/proc/cpuinfo is that core's, so LiteRT's XNNPACK picks the kernels it would pick on the device. Run for real
under qemu-user-static on the emulator `make arm-emulator` prepared."""

import os
import shutil
import subprocess

import pytest

from toolchain.executors import guest_cpuinfo
from toolchain.executors.emulated import EmulatedExecutor

ex = EmulatedExecutor()
pytestmark = pytest.mark.skipif(not ex.ready or not shutil.which("qemu-aarch64-static"),
                                reason="the emulated aarch64 executor is not set up (make arm-emulator)")


def guest(core, prefix, *argv, cwd=None):
    rootfs = ex.root / "rootfs"
    exe = rootfs / "usr" / "bin" / argv[0]
    return subprocess.run(["qemu-aarch64-static", "-cpu", core, "-L", str(prefix), str(exe),
                           *argv[1:]], capture_output=True, text=True, check=True, cwd=cwd).stdout


@pytest.mark.parametrize("core, part", [("cortex-a76", "0xd0b"), ("cortex-a53", "0xd03")])
def test_the_guest_reads_the_pinned_cores_cpuinfo(core, part, tmp_path):
    prefix = guest_cpuinfo.prefix(ex.root, core)
    assert guest_cpuinfo.prefix(ex.root, core) == prefix  # made once, then reused
    seen = guest(core, prefix, "cat", "/proc/cpuinfo")
    assert seen == guest_cpuinfo.text(core, os.cpu_count())
    assert seen.count("processor\t:") == os.cpu_count() and f"CPU part\t: {part}" in seen
    # every other path is the rootfs's (the guest's /etc is Debian arm64's), and the rootfs itself is untouched
    rootfs = ex.root / "rootfs"
    assert guest(core, prefix, "cat", "/etc/debian_version") == (rootfs / "etc" / "debian_version").read_text()
    assert not (rootfs / "proc" / "cpuinfo").exists()
    # a host path under a directory the rootfs also has (/tmp, /root: where a checkout may live) resolves to the
    # host's file, also through realpath (the entry point finds its package that way)
    (tmp_path / "here.txt").write_text("host file")
    assert guest(core, prefix, "cat", str(tmp_path / "here.txt")) == "host file"
    resolved = guest(core, prefix, "python3.11", "-c", f"import pathlib; print(pathlib.Path({str(tmp_path)!r}).resolve())")
    assert resolved.strip() == str(tmp_path.resolve())


def test_a_stale_prefix_is_made_again():
    prefix = guest_cpuinfo.prefix(ex.root, "cortex-a53")
    (prefix / guest_cpuinfo.STAMP).write_text("stale")
    (prefix / "proc" / "cpuinfo").write_text("stale")
    assert guest_cpuinfo.prefix(ex.root, "cortex-a53") == prefix
    assert (prefix / "proc" / "cpuinfo").read_text() == guest_cpuinfo.text("cortex-a53", os.cpu_count())
    assert (ex.root / "rootfs" / "usr" / "bin").is_dir()  # replacing the prefix removed links, not the rootfs
    assert not [p for p in (ex.root / "cores").iterdir() if p.name.startswith(".")]  # no half-made prefix left
