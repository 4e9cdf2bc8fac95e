"""fp16: fp32 ONNX -> half-precision ONNX with onnxconverter-common (its output passes onnx.checker;
ORT's own helper with keep_io_types does not, STACK.md). Inputs and outputs stay float32.

Range guard: fp16 overflows above 65504, and ONNX Runtime's CPU provider hides that (it runs fp16 graphs
through float casts), so a CPU-only check cannot see it. Before converting, every intermediate tensor of the
fp32 graph is measured on the calibration data; nodes whose outputs, or weights, exceed the fp16 range (with
a margin) stay float32, by name, and the meta says which and why.

Graphs the converter or ONNX Runtime mishandle (coverage suite, STACK.md): a Cast to float32 (attention's
scale computed from a shape) stays float32, since onnxconverter-common retypes its output to fp16 but not its
`to` and the graph becomes invalid; a MatMul fed by a batch-axis Transpose is rewritten to transpose after the
MatMul (exact; rewrites.py, checked with ONNX Runtime before and after), since ONNX Runtime 1.23's CPU provider
crashes the process (SIGSEGV) loading that pattern in fp16, and the CPU provider is where a GPU-less host checks
a cuda artifact. Neither pattern occurs in a plain CNN, whose conversion is unchanged.
"""

from ..errors import StageError, reraise_write_error
from ..options import check_table, defaults

NAME = "fp16"
VERSION = 7  # 7: unstamped again; the metadata stage (stages/metadata.py) stamps a copy
LIBRARIES = ("onnxconverter-common", "onnx", "onnxruntime", "numpy")
OUTPUT = "model.fp16.onnx"
DEFAULTS = defaults("fp16")  # options, types and defaults: options.SCHEMAS["fp16"]
FP16_MAX = 65504.0
MARGIN = 0.5  # keep float32 what comes within 2x of the fp16 limit on calibration data


def params_for(table: dict, path, prefix="fp16") -> dict:
    check_table(path, prefix, table, "fp16")  # unknown keys, types, allowed values
    return {**DEFAULTS, **table}


def out_of_range_nodes(model, calibration, input_names) -> dict:
    """name -> reason for nodes whose float outputs or initializers exceed the fp16 range (x MARGIN)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from ..data import batches

    limit = FP16_MAX * MARGIN
    inits = {i.name: i for i in model.graph.initializer}
    found = {}
    for n in model.graph.node:
        for name in n.input:
            if name in inits and inits[name].data_type == onnx.TensorProto.FLOAT:
                peak = float(np.abs(onnx.numpy_helper.to_array(inits[name])).max(initial=0.0))
                if peak > limit:
                    found[n.name] = f"weight {name} reaches {peak:.3g}"
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    producer = {}
    for n in probe.graph.node:
        for o in n.output:
            if o in floats and o not in known:
                probe.graph.output.append(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None))
                producer[o] = n.name
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # see the graph as written
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    peaks = dict.fromkeys(names, 0.0)
    for feed in batches(calibration, list(input_names), 64):
        for name, value in zip(names, sess.run(names, feed)):
            if value.dtype == np.float32 and value.size:
                peaks[name] = max(peaks[name], float(np.abs(value[np.isfinite(value)]).max(initial=0.0)))
    consumers = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n.name)
    for tensor, peak in peaks.items():
        if peak > limit and tensor in producer:
            # Its producer must write it in float32, and every consumer must read it in float32 (a Cast to
            # fp16 on the way in would overflow just the same).
            found.setdefault(producer[tensor], f"output {tensor} reaches {peak:.3g} on calibration data")
            for c in consumers.get(tensor, []):
                found.setdefault(c, f"input {tensor} reaches {peak:.3g} on calibration data")
    return found


def _unshare_initializers(model, blocked: set):
    """A weight shared by a float32-kept node and an fp16 node would get one type for both (onnxconverter-common
    then emits an inconsistent graph): give each kept node its own copy."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    users = {}
    for n in model.graph.node:
        for name in n.input:
            if name in inits:
                users.setdefault(name, set()).add(n.name)
    for n in model.graph.node:
        if n.name not in blocked:
            continue
        for i, name in enumerate(n.input):
            if name in inits and users[name] - blocked:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__fp32_for_{n.name}"
                model.graph.initializer.append(copy)
                n.input[i] = copy.name


def run(fp32_path, params: dict, out_dir, calibration=None, input_names=()) -> dict:
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(fp32_path))
    rewritten = _rewrite_for_ort(model, calibration, input_names)
    from .precision import POST_PROCESSING, post_processing_nodes

    # "post-processing" in op_block_list: the graph's tail after its last compute nodes (decode, NMS) stays float32
    post = [n for n, _ in post_processing_nodes(model)] if POST_PROCESSING in params["op_block_list"] else []
    block = [b for b in params["op_block_list"] if b != POST_PROCESSING] or None
    kwargs = {"keep_io_types": params["keep_io_types"], "max_finite_val": FP16_MAX}
    if block:
        kwargs["op_block_list"] = list(float16.DEFAULT_OP_BLOCK_LIST) + block
    kept = out_of_range_nodes(model, calibration, input_names) if params["range_guard"] and calibration else {}
    if kept or post:
        _unshare_initializers(model, set(kept) | set(post))
    casts = float32_casts(model)
    if kept or casts or post:
        kwargs["node_block_list"] = sorted(set(kept) | set(casts) | set(post))
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:  # one warning per tiny weight: counted, not printed
            warnings.simplefilter("always")
            half = float16.convert_float_to_float16(model, **kwargs)
        onnx.checker.check_model(half, full_check=True)
    except Exception as e:  # noqa: BLE001
        reraise_write_error(e)
        raise StageError(NAME, f"fp16 conversion failed: {type(e).__name__}: {e}") from None
    out = out_dir / OUTPUT
    onnx.save(half, str(out))
    extra = {}
    if casts:
        extra["kept_float32_casts"] = casts
    if rewritten:
        extra["rewrites"] = rewritten
    if post:
        extra["kept_float32_post_processing"] = post
    return {**extra, "keep_io_types": params["keep_io_types"], "op_block_list": block or [],
            "kept_float32_for_range": [{"node": n, "reason": r} for n, r in sorted(kept.items())],
            "cast_nodes": sum(1 for n in half.graph.node if n.op_type == "Cast"),
            "values_clamped_to_fp16_range": sum(1 for w in caught if "truncated" in str(w.message))}


def float32_casts(model) -> list:
    """Cast nodes whose output is float32: kept float32 (onnxconverter-common would retype the output to fp16
    but leave the Cast's `to`, an invalid graph), a Cast to fp16 inserted after them."""
    import onnx

    return sorted(n.name for n in model.graph.node if n.op_type == "Cast" and any(
        a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute))


def _rewrite_for_ort(model, calibration, input_names):
    """MatMul(Transpose(x)) -> Transpose(MatMul(x)) in place where it occurs, proven on ONNX Runtime before and
    after (calibration inputs, else seeded random ones). None when the graph has no such pattern."""
    import numpy as np

    from .. import rewrites

    try:
        rewritten, records = rewrites.apply(model, ["matmul-transpose"])
        if not records[0]["nodes"]:
            return None
        if calibration:
            feeds = {n: calibration[n] for n in input_names}
        else:
            from onnx.helper import tensor_dtype_to_np_dtype

            rng = np.random.default_rng(0)
            feeds = {}
            for i in model.graph.input:
                shape = [4] + [d.dim_value or 1 for d in i.type.tensor_type.shape.dim][1:]
                dtype = tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
                feeds[i.name] = rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating) \
                    else np.zeros(shape, dtype)
        check = rewrites.verify(model, rewritten, feeds, ["matmul-transpose"])
    except rewrites.RewriteError as e:
        raise StageError(NAME, f"fp16 graph rewrite failed: {e}") from None
    model.CopyFrom(rewritten)
    return {"applied": records, "check": check}


# ---- declaration (stages/__init__.py) ------------------------------------------------------------------------
TABLE = SCHEMA = "fp16"


def applies(target) -> bool:
    return True


def needs(params) -> tuple:
    return ("fp32", "calibration") if params["range_guard"] else ("fp32",)


def build(inp, params, out_dir) -> dict:
    return run(inp.fp32, params, out_dir, inp.calibration if params["range_guard"] else None, inp.input_names)
