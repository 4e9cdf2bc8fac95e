"""The runtime registry: one row per runtime module. open_artifact() picks it from the target's `runtime` field;
the validate stage's cache key holds the libraries of the target's own runtime only (a LiteRT upgrade does not
re-validate a CUDA target)."""

import importlib
from dataclasses import dataclass

from .base import RuntimeFellBack, RuntimeUnavailable, Session  # noqa: F401


@dataclass(frozen=True)
class Runtime:
    name: str
    module: str  # toolchain/runtimes/<module>.py: open_session, session_device (see base.py)
    libraries: tuple  # distributions whose versions key the validation of this runtime's targets
    judged_on_executor: bool = False  # also judged where it will run (toolchain/executors), keyed by its identity

    def load(self):
        return importlib.import_module(f".{self.module}", __package__)


RUNTIMES = {r.name: r for r in (
    Runtime("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu", "numpy")),
    Runtime("litert", "litert", ("ai-edge-litert", "numpy"), judged_on_executor=True),
    Runtime("openvino", "openvino", ("openvino", "numpy")),
)}


def runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise RuntimeUnavailable(f"no runtime module for {name!r}")
    return RUNTIMES[name]


def open_artifact(target, path, providers=None, output_shapes=None, output_names=None, input_names=None,
                  options=None) -> Session:
    """options: one runtime-options candidate of the target ({"name", "graph_optimization", "provider_options"})."""
    return runtime(target.runtime).load().open_session(target, path, providers, output_shapes, output_names,
                                                       input_names, options or {})


def device_name(target, session) -> str:
    return runtime(target.runtime).load().session_device(session)
