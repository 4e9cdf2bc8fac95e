"""quantize: fp32 ONNX -> int8 ONNX with ONNX Runtime's quantizer (static QDQ calibrated on the spec's
calibration data, or dynamic). We choose the settings; ORT does the quantizing."""

import shutil

from ..errors import StageError, reraise_write_error
from ..options import check_table, defaults
from .precision import POST_PROCESSING, post_processing_nodes

NAME = "quantize"
VERSION = 4  # 4: unstamped again; the metadata stage (stages/metadata.py) stamps a copy
LIBRARIES = ("onnxruntime", "onnx", "numpy")
OUTPUT = "model.int8.onnx"

# Options, types and defaults: options.SCHEMAS["quantize"]. method = "auto": the precision plan (stages/plan.py)
# chooses scheme and float nodes by measurement.
DEFAULTS = defaults("quantize")
KNOWN = set(DEFAULTS)


def params_for(target_table: dict, path, prefix="quantize") -> dict:
    from ..errors import SpecError

    check_table(path, prefix, target_table, "quantize")  # unknown keys, types, allowed values
    params = {**DEFAULTS, **target_table}
    for k in ("schemes", "force_float", "force_int8", "nodes_to_exclude", "op_types_to_quantize"):
        if not isinstance(params[k], list) or not all(isinstance(v, str) for v in params[k]):
            raise SpecError(path, f"{prefix}.{k}", f"must be a list of strings, got {params[k]!r}")
    from .precision import SCHEMES

    for v in params["schemes"]:
        if v not in SCHEMES:
            raise SpecError(path, f"{prefix}.schemes", f"unknown scheme {v!r} (known: {', '.join(SCHEMES)})")
    if not isinstance(params["speed_search"], bool):
        raise SpecError(path, f"{prefix}.speed_search", f"must be true or false, got {params['speed_search']!r}")
    if not params["schemes"]:
        raise SpecError(path, f"{prefix}.schemes", "must name at least one scheme")
    if isinstance(params["time_budget_s"], bool) or not isinstance(params["time_budget_s"], (int, float)) \
            or not 1 <= params["time_budget_s"] <= 86400:
        raise SpecError(path, f"{prefix}.time_budget_s", f"must be seconds in [1, 86400], got "
                                                         f"{params['time_budget_s']!r}")
    checks = {"method": ("static", "dynamic", "auto"), "activation_type": ("uint8", "int8"),
              "weight_type": ("uint8", "int8"), "calibrate_method": ("minmax", "entropy", "percentile")}
    for k, allowed in checks.items():
        if params[k] not in allowed:
            raise SpecError(path, f"{prefix}.{k}", f"must be one of {', '.join(allowed)}, got {params[k]!r}")
    return params


class _Reader:
    """ORT CalibrationDataReader over in-memory arrays, one sample at a time (batch 1, like deployment)."""

    def __init__(self, arrays, names):
        self.arrays, self.names, self.i = arrays, names, 0
        self.n = len(arrays[names[0]])

    def get_next(self):
        if self.i >= self.n:
            return None
        feed = {k: self.arrays[k][self.i:self.i + 1] for k in self.names}
        self.i += 1
        return feed

    def rewind(self):
        self.i = 0


def run(fp32_path, params: dict, out_dir, calibration: dict, input_names) -> dict:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    src = out_dir / "prep.onnx"
    if params["preprocess"]:
        try:
            quant_pre_process(str(fp32_path), str(src), skip_symbolic_shape=True)
        except Exception as e:  # noqa: BLE001
            reraise_write_error(e)
            raise StageError(NAME, f"ONNX Runtime quant_pre_process failed: {type(e).__name__}: {e}") from None
    else:
        shutil.copyfile(fp32_path, src)
    out = out_dir / OUTPUT
    exclude = list(params["nodes_to_exclude"])
    if POST_PROCESSING in exclude:  # the graph's tail after its last compute nodes (a detector's decode + NMS)
        import onnx

        tail = [n for n, _ in post_processing_nodes(onnx.load(str(src)))]
        exclude = [n for n in exclude if n != POST_PROCESSING] + tail
    common = dict(per_channel=params["per_channel"], weight_type=qtype[params["weight_type"]],
                  nodes_to_exclude=exclude,
                  op_types_to_quantize=list(params["op_types_to_quantize"]) or None)
    try:
        if params["method"] == "dynamic":
            quantize_dynamic(str(src), str(out), **common)
        else:
            method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                      "percentile": CalibrationMethod.Percentile}[params["calibrate_method"]]
            quantize_static(str(src), str(out), _Reader(calibration, input_names), quant_format=QuantFormat.QDQ,
                            activation_type=qtype[params["activation_type"]], calibrate_method=method, **common)
    except Exception as e:  # noqa: BLE001
        reraise_write_error(e)
        raise StageError(NAME, f"ONNX Runtime quantization failed: {type(e).__name__}: {e}") from None
    finally:
        src.unlink(missing_ok=True)
        for leftover in out_dir.glob("*.onnx.data"):
            leftover.unlink()
        for leftover in out_dir.glob("augmented_model*.onnx"):
            leftover.unlink()
    import onnx

    graph = onnx.load(str(out)).graph
    counts = {}
    for n in graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {"scheme": {k: params[k] for k in ("method", "per_channel", "activation_type", "weight_type",
                                              "calibrate_method")},
            "calibration_samples": len(calibration[input_names[0]]) if calibration else 0,
            "quantized_nodes": counts.get("QuantizeLinear", 0) + counts.get("DynamicQuantizeLinear", 0),
            "op_counts": counts}


# ---- declaration (stages/__init__.py) ------------------------------------------------------------------------
TABLE = SCHEMA = "quantize"


def applies(target) -> bool:
    return target.table(TABLE).get("method", DEFAULTS["method"]) != "auto"  # "auto": the precision plan


def needs(params) -> tuple:
    return ("fp32", "calibration") if params["method"] == "static" else ("fp32",)


def build(inp, params, out_dir) -> dict:
    return run(inp.fp32, params, out_dir, inp.calibration if params["method"] == "static" else None,
               inp.input_names)
