"""One module per runtime. open_artifact() picks it from the target's `runtime` field."""

from .base import RuntimeFellBack, RuntimeUnavailable  # noqa: F401


def open_artifact(target, path, providers=None, output_shapes=None, output_names=None, input_names=None,
                  options=None):
    """options: one runtime-options candidate of the target ({"name", "graph_optimization", "provider_options"})."""
    options = options or {}
    if target.runtime == "onnxruntime":
        from .onnxruntime import OrtSession

        return OrtSession(path, providers or target.providers, target.threads,
                          provider_options=options.get("provider_options"),
                          io_binding=bool(target.latency.get("io_binding")),
                          graph_optimization=options.get("graph_optimization", "all"))
    if target.runtime == "litert":
        from .litert import LiteRTSession

        return LiteRTSession(path, target.threads, output_shapes, output_names, input_names)
    raise RuntimeUnavailable(f"no runtime module for {target.runtime!r}")
