"""executors/guest_cpuinfo.py: each pinned core gets a qemu -L prefix (the arm64 rootfs by symlink) whose
/proc/cpuinfo is that core's, so LiteRT's XNNPACK picks the kernels it would pick on the device. Run for real
under qemu-user-static (make arm-emulator)."""

import os
import shutil
import subprocess

import pytest

from toolchain.executors import guest_cpuinfo
from toolchain.executors.emulated import EmulatedExecutor

ex = EmulatedExecutor()
pytestmark = pytest.mark.skipif(not ex.ready or not shutil.which("qemu-aarch64-static"),
                                reason="the emulated aarch64 executor is not set up (make arm-emulator)")


@pytest.mark.parametrize("core, part", [("cortex-a76", "0xd0b"), ("cortex-a53", "0xd03")])
def test_the_guest_reads_the_pinned_cores_cpuinfo(core, part, tmp_path):
    root = tmp_path / "emu"
    root.mkdir()
    (root / "rootfs").symlink_to(ex.root / "rootfs")
    prefix = guest_cpuinfo.prefix(root, core)
    assert guest_cpuinfo.prefix(root, core) == prefix  # made once, then reused
    rootfs = ex.root / "rootfs"
    seen = subprocess.run(["qemu-aarch64-static", "-cpu", core, "-L", str(prefix), str(rootfs / "bin" / "cat"),
                           "/proc/cpuinfo"], capture_output=True, text=True, check=True).stdout
    assert seen == guest_cpuinfo.text(core, os.cpu_count())
    assert seen.count("processor\t:") == os.cpu_count() and f"CPU part\t: {part}" in seen
    # every other path is the rootfs's (the guest's /etc is Debian arm64's), and the rootfs itself is untouched
    release = subprocess.run(["qemu-aarch64-static", "-cpu", core, "-L", str(prefix), str(rootfs / "bin" / "cat"),
                              "/etc/debian_version"], capture_output=True, text=True, check=True).stdout
    assert release == (rootfs / "etc" / "debian_version").read_text()
    assert not (rootfs / "proc" / "cpuinfo").exists()


def test_a_stale_prefix_is_replaced(tmp_path):
    root = tmp_path / "emu"
    root.mkdir()
    (root / "rootfs").symlink_to(ex.root / "rootfs")
    prefix = guest_cpuinfo.prefix(root, "cortex-a53")
    (prefix / "proc" / "cpuinfo").write_text("stale")
    assert guest_cpuinfo.prefix(root, "cortex-a53") == prefix
    assert (prefix / "proc" / "cpuinfo").read_text() == guest_cpuinfo.text("cortex-a53", os.cpu_count())
    assert (ex.root / "rootfs" / "usr" / "bin").is_dir()  # replacing the prefix removed symlinks, not the rootfs
    assert sorted(p.name for p in (root / "cores").iterdir()) == ["cortex-a53"]
