"""trace: PyTorch -> fp32 ONNX (legacy TorchScript exporter: ~50x faster than dynamo on small CNNs, and
it writes one self-contained file)."""

import warnings
from pathlib import Path

from ..errors import StageError, reraise_write_error

NAME = "trace"
VERSION = 2
LIBRARIES = ("torch", "onnx")
OUTPUT = "model.fp32.onnx"

_TORCH_DTYPES = {"float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32",
                 "uint8": "uint8", "int8": "int8", "bool": "bool"}


def example_inputs(inputs, torch):
    """Deterministic example tensors of the spec's shapes (values only matter for tracing paths)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for t in inputs:
        dtype = getattr(torch, _TORCH_DTYPES[t.dtype])
        if dtype.is_floating_point:
            out.append(torch.randn(t.shape, generator=g).to(dtype))
        else:
            out.append(torch.ones(t.shape, dtype=dtype))
    return tuple(out)


def run(model, params: dict, out_dir, inputs, outputs) -> dict:
    import onnx
    import torch

    try:
        args = example_inputs(inputs, torch)
    except (RuntimeError, MemoryError) as e:  # the spec's example shapes cannot be allocated here
        from ..errors import DataError

        shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in inputs)
        raise DataError(f"inputs: cannot allocate example inputs of the spec's shapes ({shapes}): "
                        f"{' '.join(str(e).split())[:200]}") from None
    with torch.no_grad():
        try:
            result = model(*args)
        except Exception as e:  # noqa: BLE001 - any failure of the user's forward is a trace failure
            reraise_write_error(e)
            raise StageError(NAME, f"the model's forward failed on example inputs: {type(e).__name__}: {e}") from None
    results = result if isinstance(result, (tuple, list)) else (result,)
    if isinstance(result, dict) or not all(isinstance(r, torch.Tensor) for r in results):
        kind = type(result).__name__
        raise StageError(NAME, f"the model returns a {kind}; export needs a tensor or a tuple of tensors "
                               f"(wrap the model to return {', '.join(o.name for o in outputs)})")
    if len(results) != len(outputs):
        raise StageError(NAME, f"the model returns {len(results)} tensors but the spec names {len(outputs)} outputs")

    dynamic_axes = {t.name: dict(t.dynamic_axes) for t in inputs if t.dynamic_axes}
    batch_dynamic = any(0 in t.dynamic_axes for t in inputs)
    for o in outputs:
        if batch_dynamic:
            dynamic_axes[o.name] = {0: "batch"}
    path = out_dir / OUTPUT
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(model, args, str(path), input_names=[t.name for t in inputs],
                              output_names=[o.name for o in outputs], dynamic_axes=dynamic_axes,
                              opset_version=params["opset"], do_constant_folding=True, dynamo=False)
        except Exception as e:  # noqa: BLE001
            reraise_write_error(e)
            msg = " ".join(str(e).split())[:400]
            raise StageError(NAME, f"torch.onnx.export failed: {type(e).__name__}: {msg}") from None
    tracer = [w for w in caught if w.category.__name__ == "TracerWarning"]
    tracer_warnings = sorted({str(w.message).split("\n")[0][:200] for w in tracer})
    # A tensor turned into a Python bool means an `if` on data: the export froze one branch. Inside torch's own
    # modules (nn.GRU/LSTM, multi-head attention) these are shape assertions that only raise, never branches of
    # the graph; the reference stage still compares the exported graph with PyTorch on the evaluation data.
    torch_dir = str(Path(torch.__file__).resolve().parent) + "/"
    control_flow = [str(w.message).split("\n")[0][:200] for w in tracer if "Python boolean" in str(w.message)
                    and not str(Path(w.filename).resolve()).startswith(torch_dir)]
    if control_flow:
        path.unlink(missing_ok=True)
        raise StageError(NAME, "data-dependent control flow: the exported graph would keep only the branch taken "
                               f"by the example input ({control_flow[0]})")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001
        reraise_write_error(e)
        raise StageError(NAME, f"exported ONNX fails onnx.checker: {e}") from None
    model_proto = onnx.load(str(path))
    return {
        "opset": params["opset"],
        "nodes": len(model_proto.graph.node),
        "op_types": sorted({n.op_type for n in model_proto.graph.node}),
        "tracer_warnings": tracer_warnings,
    }


# ---- declaration (stages/__init__.py) ------------------------------------------------------------------------
def spec_params(spec) -> dict:
    return {"opset": spec.opset, "inputs": [[t.name, list(t.shape), t.dtype, t.dynamic_axes] for t in spec.inputs],
            "outputs": [o.name for o in spec.outputs]}


def needs(params) -> tuple:
    return ("model",)


def build(inp, params, out_dir) -> dict:
    return run(inp.model, params, out_dir, inp.spec.inputs, inp.spec.outputs)
