"""Installed library versions, read from package metadata (no heavy imports)."""

from functools import lru_cache
from importlib import metadata


@lru_cache(maxsize=None)
def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not-installed"


def versions(dists) -> dict:
    return {d: version_of(d) for d in sorted(dists)}


# Every library whose version can change an artifact or a figure; recorded in reports and release manifests.
TRACKED = (
    "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxconverter-common", "onnx2tf", "onnxsim",
    "tensorflow", "ai-edge-litert", "torch-pruning", "numpy", "safetensors",
)


@lru_cache(maxsize=None)
def locked_version(dist: str):
    """The version requirements.lock pins (the project's own pins where the lock file is not beside the package);
    None when it pins none."""
    import re
    from pathlib import Path

    lock = Path(__file__).resolve().parents[1] / "requirements.lock"
    try:
        lines = lock.read_text().splitlines()
    except OSError:
        lines = metadata.requires("toolchain") or []
    norm = re.sub(r"[-_.]+", "-", dist).lower()
    for line in lines:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
        if m and re.sub(r"[-_.]+", "-", m.group(1)).lower() == norm:
            return m.group(2)
    return None
