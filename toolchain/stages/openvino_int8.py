"""openvino_int8: fp32 ONNX -> int8 OpenVINO IR with NNCF post-training quantization on the spec's calibration
data, plus the fp32 IR the artifact is timed against on the same runtime. An IR is two files, topology (.xml)
and weights (.bin), with the same stem (formats.FORMATS["openvino"]). Weights stay float32 where they stay float
(no fp16 compression), so the fp32 baseline is fp32.

NNCF does the quantizing (its defaults: symmetric int8 weights per channel, activations per tensor; `preset =
"mixed"` makes activations asymmetric); we choose the settings and feed it the calibration samples one at a time,
batch 1, as deployment runs them.
"""

import contextlib
import io
import logging

from ..errors import StageError, reraise_write_error
from ..options import check_table, defaults

NAME = "openvino_int8"
VERSION = 1
LIBRARIES = ("openvino", "nncf", "numpy")
OUTPUT = "model.int8.xml"
BASELINE = "model.fp32.xml"
TABLE = SCHEMA = "nncf"  # options, types and defaults: options.SCHEMAS["nncf"]
DEFAULTS = defaults(SCHEMA)


def params_for(table: dict, path, prefix=TABLE) -> dict:
    check_table(path, prefix, table, SCHEMA)  # unknown keys, types, allowed values
    return {**DEFAULTS, **table}


def applies(target) -> bool:
    return True


def needs(params) -> tuple:
    return ("fp32", "calibration")


def build(inp, params, out_dir) -> dict:
    return run(inp.fp32, params, out_dir, inp.calibration, inp.input_names)


def run(fp32_path, params: dict, out_dir, calibration: dict, input_names) -> dict:
    import openvino as ov

    try:
        model = ov.Core().read_model(str(fp32_path))
        ov.save_model(model, str(out_dir / BASELINE), compress_to_fp16=False)
    except Exception as e:  # noqa: BLE001
        reraise_write_error(e)
        raise StageError(NAME, f"OpenVINO could not read the fp32 ONNX: {type(e).__name__}: {_first(e)}") from None
    n = len(calibration[input_names[0]])
    samples = [{k: calibration[k][i:i + 1] for k in input_names} for i in range(n)]
    try:
        quantized = _quantize(model, samples, params)
        ov.save_model(quantized, str(out_dir / OUTPUT), compress_to_fp16=False)
    except Exception as e:  # noqa: BLE001
        reraise_write_error(e)
        raise StageError(NAME, f"NNCF quantization failed: {type(e).__name__}: {_first(e)}") from None
    counts = {}
    for op in quantized.get_ops():
        counts[op.get_type_name()] = counts.get(op.get_type_name(), 0) + 1
    return {"scheme": {"quantizer": "nncf", **{k: params[k] for k in ("preset", "fast_bias_correction",
                                                                     "model_type")}},
            "calibration_samples": min(n, params["subset_size"]), "fake_quantize_nodes": counts.get("FakeQuantize", 0),
            "op_counts": counts}


def _quantize(model, samples, params):
    import nncf

    kwargs = {"preset": {"performance": nncf.QuantizationPreset.PERFORMANCE,
                         "mixed": nncf.QuantizationPreset.MIXED}[params["preset"]],
              "subset_size": min(len(samples), params["subset_size"]),
              "fast_bias_correction": params["fast_bias_correction"]}
    if params["model_type"] == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)  # its INFO lines and progress bars would leak past -q
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return nncf.quantize(model, nncf.Dataset(samples), **kwargs)
    finally:
        nncf_log.setLevel(level)


def _first(e) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""
