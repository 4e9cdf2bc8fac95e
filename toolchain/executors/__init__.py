"""Executors: where a runtime's validation entry point runs. `local` (the host's python), `emulated` (an aarch64
Debian userland under qemu-user: real ARM kernels, and the instruction-count cost model), `ssh` (a device).

Every executor runs the same child-process entry point (litert_entry.py) on a work directory holding the
artifact, its fp32 baseline and the evaluation inputs, under a time limit, and returns its JSON result and
output arrays. A target file names its executor (`executor = "emulated"`); `--device TARGET=ssh://...` points
a target at a device.
"""

from .base import Executor, ExecutorError, ExecutorUnavailable, RunResult  # noqa: F401
from .config import for_target, identity  # noqa: F401
