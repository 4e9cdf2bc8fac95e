"""What every runtime module provides: open an artifact, run it on data in the model's own layout.

A runtime module (toolchain/runtimes/NAME.py, one row in RUNTIMES of runtimes/__init__.py) defines
    open_session(target, path, providers, output_shapes, output_names, input_names, options) -> Session
    session_device(session) -> str        the device the figures were measured on
and its `open_session` is the fallback check: it raises RuntimeUnavailable when the runtime or device is missing
here (the target is skipped, with that reason) and RuntimeFellBack when the runtime loaded but not on the device
asked for (never a pass).
"""

from typing import Callable, Protocol


class RuntimeUnavailable(Exception):
    """The target's runtime or device is not present on this machine: the target is skipped, with this reason."""


class RuntimeFellBack(Exception):
    """The runtime loaded but not on the device asked for (e.g. CUDA asked, CPU used): never a pass."""


class Session(Protocol):
    """One loaded artifact. Inputs and outputs are numpy arrays in the model's own layout and dtype."""

    batchable: bool  # may run the evaluation data in batches (else one sample at a time)
    providers: list  # what really runs it, as the runtime names it
    timing_method: str  # how `timer` times one inference, for the report

    def run(self, feeds: dict) -> list: ...

    def timer(self, feeds: dict) -> Callable[[], object]: ...
