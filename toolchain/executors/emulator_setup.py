"""`toolchain arm-emulator`: prepare the emulated aarch64 executor with the same script `make arm-emulator` runs
(setup_arm_emulator.sh, shipped in the wheel with insn_marker.c, apt_sources.py and the lock), so a pip-installed
toolchain judges arm64 on ARM kernels too. The lock travels as package data rather than being rebuilt from the
installed versions: the script, its arguments and its stamps stay exactly what make uses, so either command finds
the other's work done."""

import subprocess
import sys
from pathlib import Path

from ..errors import StageError, ToolchainError
from ..versions import version_of

HERE = Path(__file__).resolve().parent
SCRIPT, LOCK = HERE / "setup_arm_emulator.sh", HERE / "requirements.lock"
NOT_ROOT = 2  # the script's exit status when Debian packages are missing and it is not root


def _pin(dist):
    for line in LOCK.read_text().splitlines():
        if line.lower().startswith(dist + "=="):
            return line.split("==", 1)[1].strip()
    return None


def version_mismatches() -> list:
    """The aarch64 wheels follow the lock; a host whose LiteRT or numpy differs would be judged on other versions."""
    return [f"{d} {version_of(d)} here, {_pin(d)} in the emulator" for d in ("ai-edge-litert", "numpy")
            if version_of(d) != _pin(d)]


def prepare(dest: Path, log=None) -> Path:
    """Runs the setup into dest (idempotent; each step stamped). Relays the script's progress lines to log; a failure
    is one ToolchainError naming its last line (exit 2: not root and packages missing; else exit 4)."""
    log = log or (lambda line: print(line, file=sys.stderr))
    dest = Path(dest).absolute()
    proc = subprocess.Popen(["bash", str(SCRIPT), str(dest), sys.executable, str(LOCK)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    last = None
    try:
        for line in proc.stdout:  # held back by one: the last line goes into the error, not printed twice
            if last is not None:
                log(last)
            last = line.rstrip("\n")
        rc = proc.wait()
    except BaseException:  # Ctrl-C: the setup goes down with us
        proc.kill()
        proc.wait()
        raise
    if rc == 0:
        return dest
    why = (last or f"exited with status {rc}").removeprefix("arm-emulator: ")
    if rc == NOT_ROOT:  # exit 2: the machine needs the user's (root's) hand first
        raise ToolchainError(f"arm-emulator: {dest}: {why}")
    raise StageError("arm-emulator", f"setup in {dest} failed (exit {rc}): {why}")
