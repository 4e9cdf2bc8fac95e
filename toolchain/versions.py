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
