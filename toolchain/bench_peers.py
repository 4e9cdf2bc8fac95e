"""What a user would pick instead of our artifact, made from the same fp32 ONNX and calibration data, for the
side-by-side tables of `make bench` (bench_suite.py):

- ORT recipe: ONNX Runtime's documented static quantization (quant_pre_process, then quantize_static with QDQ,
  uint8 activations, int8 per-channel weights, MinMax calibration); for a transformer also the docs' dynamic
  recipe (quantize_dynamic, int8 per-channel weights);
- OpenVINO fp32 (inference precision pinned to f32) and OpenVINO + NNCF int8 (nncf.quantize with its defaults,
  model_type=TRANSFORMER for a transformer), when the optional packages are installed;
- arm64: onnx2tf's full-integer model with its defaults (from the tflite stage, counted on the ARM cost model).

Every x86 peer is a `Peer(name, timer, outputs)`: timer(feed) -> a call timed interleaved with the others, outputs
(evaluation) -> list of arrays, so every row of a table is measured the same way.
"""

import contextlib
import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np


class Peer(NamedTuple):
    name: str
    precision: str  # "fp32" | "int8"
    timer: Callable
    outputs: Callable
    note: str = ""


class Missing(NamedTuple):
    name: str
    precision: str
    reason: str


@contextlib.contextmanager
def scratch():
    """A private working folder for making the peers: their models, and anything a library writes into the current
    directory (quant_pre_process was seen to), go there and are removed with it, whatever happens. Sessions made
    inside it have loaded their models and keep working after it is gone."""
    from .debris import scratch_dir

    before = os.getcwd()
    with scratch_dir("toolchain-bench-peers") as work:
        os.chdir(work)
        try:
            yield Path(work)
        finally:
            os.chdir(before)


def _reader(calibration, names):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(calibration[names[0]])
            self.it = iter([{k: calibration[k][i:i + 1] for k in names} for i in range(n)])

        def get_next(self):
            return next(self.it, None)
    return Reader()


def _ort(name, precision, path, threads=1, note=""):
    from .runtimes.onnxruntime import OrtSession

    s = OrtSession(path, ["CPUExecutionProvider"], threads)
    return Peer(name, precision, s.timer, lambda data: _loop(s.run, data, s.input_names), note)


def _loop(run, data, names):
    n = len(data[names[0]])
    outs = [run({k: data[k][i:i + 1] for k in names}) for i in range(n)]
    return [np.concatenate(parts) for parts in zip(*outs)]


def ort_fp32(fp32_path):
    return _ort("ORT fp32", "fp32", fp32_path)


def ort_recipe(fp32_path, calibration, names, work: Path, transformer=False):
    """quant_pre_process + quantize_static QDQ u8s8 per-channel (the docs' CNN recipe)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep, out = work / "ort_recipe.prep.onnx", work / "ort_recipe.int8.onnx"
    quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=transformer)
    quantize_static(str(prep), str(out), _reader(calibration, names), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    return _ort("ORT recipe (static QDQ u8s8 per-channel)", "int8", out)


def ort_dynamic(fp32_path, work: Path):
    """quantize_dynamic, int8 per-channel weights (the docs' transformer recipe)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep, out = work / "ort_dynamic.prep.onnx", work / "ort_dynamic.int8.onnx"
    quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=True)
    quantize_dynamic(str(prep), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return _ort("ORT recipe (dynamic int8 per-channel)", "int8", out)


def openvino_available() -> str | None:
    """None when OpenVINO and NNCF import, else why not."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except Exception as e:  # noqa: BLE001 - optional peers: any import failure means "not installed here"
        return f"not installed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return None


def _ov_peer(name, precision, ov_model, names, note=""):
    import openvino as ov

    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
                                                         "PERFORMANCE_HINT": "LATENCY",
                                                         "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    outs = list(compiled.outputs)

    def run(feed):
        r = req.infer(feed)
        return [np.asarray(r[o]) for o in outs]

    def timer(feed):
        feed = dict(feed)
        return lambda: req.infer(feed)
    return Peer(name, precision, timer, lambda data: _loop(run, data, names), note)


def openvino_fp32(fp32_path, names):
    import openvino as ov

    return _ov_peer("OpenVINO fp32", "fp32", ov.Core().read_model(str(fp32_path)), names,
                    "inference precision pinned to f32")


def openvino_nncf(fp32_path, calibration, names, transformer=False):
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_path))
    n = len(calibration[names[0]])
    data = nncf.Dataset([{k: calibration[k][i:i + 1] for k in names} for i in range(n)])
    kw = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    q = nncf.quantize(model, data, subset_size=n, **kw)
    # int8 kernels with f32 for what stays float (the same pin as the fp32 peer)
    return _ov_peer("OpenVINO + NNCF int8", "int8", q, names, "nncf.quantize defaults, inference precision f32")
