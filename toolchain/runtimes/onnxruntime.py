"""ONNX Runtime (CPU and CUDA providers). Checks which providers a session really uses: no silent fallback."""

import numpy as np

from .base import RuntimeFellBack, RuntimeUnavailable

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
       "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


OPT_LEVELS = {
    "all": lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disabled": lambda ort: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def available_providers():
    import onnxruntime as ort

    return ort.get_available_providers()


class OrtSession:
    batchable = True

    def __init__(self, path, providers=("CPUExecutionProvider",), threads=1, provider_options=None,
                 io_binding=False, graph_optimization="all"):
        import onnxruntime as ort

        providers = list(providers)
        if ("CUDAExecutionProvider" in providers and hasattr(ort, "preload_dlls")
                and "CUDAExecutionProvider" in ort.get_available_providers()):
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, when that is how CUDA is installed
        have = ort.get_available_providers()
        missing = [p for p in providers if p not in have]
        if missing:
            raise RuntimeUnavailable(f"{', '.join(missing)} not available in onnxruntime {ort.__version__} "
                                     f"on this machine (available: {', '.join(have)})")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = OPT_LEVELS[graph_optimization](ort)
        so.log_severity_level = 3
        opts = [dict((provider_options or {}).get(p, {})) for p in providers]
        self.session = ort.InferenceSession(str(path), so, providers=providers, provider_options=opts)
        used = self.session.get_providers()
        if providers[0] not in used:
            raise RuntimeFellBack(f"asked for {providers[0]}, the session runs on {', '.join(used)}")
        self.providers = used
        self.io_binding = io_binding and providers[0] != "CPUExecutionProvider"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._in_types = {i.name: _NP.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.device = providers[0]

    def run(self, feeds: dict) -> list:
        feeds = {k: np.asarray(v, dtype=self._in_types[k]) for k, v in feeds.items() if k in self._in_types}
        return self.session.run(self.output_names, feeds)

    def timer(self, feeds: dict):
        """A no-argument callable that runs one inference; with I/O binding on a GPU, inputs and outputs stay
        on the device so the figure is the model's, not host copies'."""
        feeds = {k: np.asarray(v, dtype=self._in_types[k]) for k, v in feeds.items() if k in self._in_types}
        if not self.io_binding:
            return lambda: self.session.run(self.output_names, feeds)
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)  # allocate outputs once

        def call():
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return call

    @property
    def timing_method(self):
        return "io_binding (device-resident inputs/outputs)" if self.io_binding else "session.run (host arrays)"


def device_name(provider):
    """A human name for the device the figures were measured on."""
    if provider == "CUDAExecutionProvider":
        import subprocess

        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10)
            return out.stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "CUDA device (name unknown)"
    from ..hostinfo import cpu_name
    return cpu_name()


def optimized_op_counts(path, graph_optimization="all", threads=1) -> dict:
    """Op type -> count in the graph ONNX Runtime's CPU provider really runs after its graph optimizations (the
    QDQ pairs it fused into QLinear* kernels, the convolutions it left float). The optimized graph is written to a
    scratch file by ORT itself and read back; the artifact is untouched."""
    import collections
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="toolchain-ortopt-") as d:
        out = Path(d) / "optimized.onnx"
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = OPT_LEVELS[graph_optimization](ort)
        so.optimized_model_filepath = str(out)
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(out), load_external_data=False).graph
    return dict(sorted(collections.Counter(n.op_type for n in graph.node).items()))


def open_session(target, path, providers, output_shapes, output_names, input_names, options) -> OrtSession:
    return OrtSession(path, providers or target.providers, target.threads,
                      provider_options=options.get("provider_options"),
                      io_binding=bool(target.latency.get("io_binding")),
                      graph_optimization=options.get("graph_optimization", "all"))


def session_device(session) -> str:
    return device_name(session.device)
