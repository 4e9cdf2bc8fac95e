"""Builds on a Dask cluster (`toolchain build --scheduler tcp://HOST:PORT`, `toolchain worker`).

The client walks the very nodes a local build runs (pipeline.Pipeline.nodes) and submits each one, once its inputs
are built, as a Dask task whose key is `<stage>-<cache key>`: the same stage of two models (same key) runs once.
Only paths and digests travel through Dask; a stage's outputs go through the shared cache (`--cache s3://` or
`file://`, required with a scheduler), so a worker on another machine reads its inputs from it and publishes to
it, and the client pulls what it publishes. Nodes that measure (validate, and any stage that needs "host") carry a
Dask resource of their target (`resource_of`) and land on a worker that offers it; the rest run anywhere.

Nothing here imports Dask: a build without a scheduler never pays for it (the modules below do, when used).
"""

import re

from ..errors import EXIT_STAGE_FAILED, EXIT_USAGE, StageError, ToolchainError

SCHEDULER_ENV = "TOOLCHAIN_SCHEDULER"
TIMEOUT_ENV = "TOOLCHAIN_SCHEDULER_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
RESOURCE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class ClusterError(StageError):
    """The cluster could not run the build (scheduler unreachable, no worker offers a resource, a stage's workers
    kept dying): one line, exit 4, and a `stage-failed` report naming where it stopped."""

    exit_code = EXIT_STAGE_FAILED


class ClusterUsageError(ToolchainError):
    """--scheduler used wrongly (bad address, no shared cache): one line, exit 2."""

    exit_code = EXIT_USAGE


def resolve_scheduler(address):
    """The scheduler to use: the one given, else $TOOLCHAIN_SCHEDULER; '' (or neither) means build locally."""
    import os

    if address is None:
        address = os.environ.get(SCHEDULER_ENV, "")
    return address.strip() or None


def resolve_timeout(seconds):
    import os

    if seconds is None:
        raw = os.environ.get(TIMEOUT_ENV, "")
        try:
            seconds = float(raw) if raw.strip() else DEFAULT_TIMEOUT_S
        except ValueError:
            raise ClusterUsageError(f"${TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if not seconds > 0:
        raise ClusterUsageError(f"--scheduler-timeout {seconds}: must be more than 0 seconds")
    return float(seconds)


def check_address(address: str) -> str:
    """tcp://HOST:PORT (or tls://): a usage error otherwise, before anything connects."""
    m = re.fullmatch(r"(tcp|tls)://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})", address)
    if not m or not 0 < int(m[3]) < 65536:
        raise ClusterUsageError(f"--scheduler {address}: expected tcp://HOST:PORT (a Dask scheduler)")
    return address


def resource_of(target) -> str:
    """The Dask resource a worker must offer to judge this target: the target file's `resource` (a device label),
    else the hardware its runtime runs on: LiteRT -> arm64, ONNX Runtime's CUDA provider first -> cuda, else
    x86_64."""
    if target.resource:
        return target.resource
    if target.runtime == "litert":
        return "arm64"
    if target.providers and target.providers[0] == "CUDAExecutionProvider":
        return "cuda"
    return "x86_64"


def node_resource(node):
    """The resource a node needs (None: any worker): validate, and every stage that measures on its machine."""
    if node.target is None:
        return None
    if node.name == "validate" or "host" in node.needs:
        return resource_of(node.pipe.targets[node.target])
    return None


def open_session(scheduler, cache_url, timeout_s=None):
    """The cluster a build runs on (None: this process). A scheduler needs a shared cache: workers on other
    machines read their inputs from it and publish to it, and the client pulls the results from it."""
    if scheduler is not None and not isinstance(scheduler, str):
        return scheduler  # a Session a caller opened for several builds
    address = resolve_scheduler(scheduler)
    if address is None:
        return None
    check_address(address)
    if not cache_url:
        raise ClusterUsageError(f"--scheduler {address}: needs a shared cache the workers and this machine both "
                                "reach: --cache s3://BUCKET/PREFIX or --cache file:///SHARED/DIR (or "
                                "$TOOLCHAIN_REMOTE_CACHE)")
    from .session import Session

    return Session(address, cache_url, resolve_timeout(timeout_s))
