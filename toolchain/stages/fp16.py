"""fp16: fp32 ONNX -> half-precision ONNX with onnxconverter-common (its output passes onnx.checker;
ORT's own helper with keep_io_types does not, STACK.md). Inputs and outputs stay float32."""

from ..errors import StageError

NAME = "fp16"
VERSION = 1
LIBRARIES = ("onnxconverter-common", "onnx")
OUTPUT = "model.fp16.onnx"
DEFAULTS = {"keep_io_types": True, "op_block_list": []}


def params_for(table: dict, path, prefix="fp16") -> dict:
    from ..errors import SpecError

    unknown = set(table) - set(DEFAULTS)
    if unknown:
        raise SpecError(path, prefix, f"unknown option(s): {', '.join(sorted(unknown))}")
    return {**DEFAULTS, **table}


def run(fp32_path, params: dict, out_dir) -> dict:
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(fp32_path))
    block = list(params["op_block_list"]) or None
    kwargs = {"keep_io_types": params["keep_io_types"]}
    if block:
        kwargs["op_block_list"] = list(float16.DEFAULT_OP_BLOCK_LIST) + block
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:  # one warning per tiny weight: counted, not printed
            warnings.simplefilter("always")
            half = float16.convert_float_to_float16(model, **kwargs)
        onnx.checker.check_model(half, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise StageError(NAME, f"fp16 conversion failed: {type(e).__name__}: {e}") from None
    out = out_dir / OUTPUT
    onnx.save(half, str(out))
    return {"keep_io_types": params["keep_io_types"], "op_block_list": block or [],
            "cast_nodes": sum(1 for n in half.graph.node if n.op_type == "Cast"),
            "values_clamped_to_fp16_range": sum(1 for w in caught if "truncated" in str(w.message))}
