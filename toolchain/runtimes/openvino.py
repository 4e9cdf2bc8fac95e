"""OpenVINO's CPU runtime. Inputs by name in the model's own layout (an IR made from the traced ONNX keeps it).
The fallback check: the compiled model must execute on the CPU device asked for; inference precision is pinned to
f32 so a CPU with bf16 units does not quietly run the fp32 baseline (or the float parts of int8) in bf16."""

import numpy as np

from .base import RuntimeFellBack, RuntimeUnavailable

DEVICE = "CPU"


class OpenVINOSession:
    timing_method = "infer_request.infer (tensors set once)"

    def __init__(self, path, threads=1):
        try:
            import openvino as ov
        except ImportError as e:
            raise RuntimeUnavailable(f"openvino is not installed ({e})") from None
        core = ov.Core()
        if DEVICE not in core.available_devices:
            raise RuntimeUnavailable(f"OpenVINO {ov.__version__} sees no {DEVICE} device here "
                                     f"(available: {', '.join(core.available_devices) or 'none'})")
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(str(path), DEVICE, config)
        used = list(self.compiled.get_property("EXECUTION_DEVICES"))
        if not used or not all(d.startswith(DEVICE) for d in used):
            raise RuntimeFellBack(f"asked for {DEVICE}, the model executes on {', '.join(used) or 'nothing'}")
        self.providers = [f"OpenVINO {ov.__version__} {d}" for d in used]
        self.cpu_name = core.get_property(DEVICE, "FULL_DEVICE_NAME")
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        # batches only where the IR's batch axis is dynamic (an IR traced at batch 1 is fixed)
        self.batchable = all(p.get_partial_shape().rank.is_static and p.get_partial_shape()[0].is_dynamic
                             for p in self.compiled.inputs)

    def _feeds(self, feeds: dict) -> dict:
        if all(n in feeds for n in self.input_names):
            return {n: np.ascontiguousarray(feeds[n]) for n in self.input_names}
        return {i: np.ascontiguousarray(v) for i, v in enumerate(feeds.values())}

    def run(self, feeds: dict) -> list:
        result = self.request.infer(self._feeds(feeds))
        return [np.asarray(result[o]).astype(np.float32) for o in self.compiled.outputs]

    def timer(self, feeds: dict):
        import openvino as ov

        request = self.compiled.create_infer_request()
        for k, v in self._feeds(feeds).items():  # by name, or by position where the names differ
            if isinstance(k, int):
                request.set_input_tensor(k, ov.Tensor(v))
            else:
                request.set_tensor(k, ov.Tensor(v))
        return request.infer


def open_session(target, path, providers, output_shapes, output_names, input_names, options) -> OpenVINOSession:
    return OpenVINOSession(path, target.threads)


def session_device(session) -> str:
    return session.cpu_name
