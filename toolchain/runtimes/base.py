"""What every runtime module provides: open an artifact, run it on data in the model's own layout."""


class RuntimeUnavailable(Exception):
    """The target's runtime or device is not present on this machine: the target is skipped, with this reason."""


class RuntimeFellBack(Exception):
    """The runtime loaded but not on the device asked for (e.g. CUDA asked, CPU used): never a pass."""
