"""reference: fp32 PyTorch outputs on the evaluation data, and the check that the traced ONNX reproduces them
at fp32 tolerance. Runs right after trace, before any target stage; every target is judged against these."""

from ..data import batches
from ..errors import StageError

NAME = "reference"
VERSION = 3
LIBRARIES = ("torch", "onnxruntime", "numpy")
OUTPUT = "reference.npz"
BATCH = 64


def torch_outputs(model, evaluation, inputs) -> list:
    import numpy as np
    import torch

    names = [t.name for t in inputs]
    chunks = []
    with torch.no_grad():
        for feed in batches(evaluation, names, BATCH):
            out = model(*(torch.from_numpy(feed[n]) for n in names))
            out = out if isinstance(out, (tuple, list)) else (out,)
            chunks.append([o.float().numpy() for o in out])
    return [np.concatenate(parts) for parts in zip(*chunks)]


def run(model, fp32_path, params: dict, out_dir, evaluation: dict, spec) -> dict:
    import numpy as np

    from ..runtimes.onnxruntime import OrtSession
    from ..validation import metrics

    ref = torch_outputs(model, evaluation, spec.inputs)
    bad = metrics.non_finite(ref)
    if bad:
        raise StageError(NAME, f"the PyTorch model itself produces {bad} NaN/Inf values on the evaluation data")
    session = OrtSession(fp32_path)
    names = [t.name for t in spec.inputs]
    onnx_chunks = [session.run(feed) for feed in batches(evaluation, names, BATCH)]
    got = [np.concatenate(parts) for parts in zip(*onnx_chunks)]
    worst = {}
    for o, r, g in zip(spec.outputs, ref, got):
        if r.shape != g.shape:
            raise StageError("trace", f"ONNX output {o.name!r} has shape {g.shape}, PyTorch gives {r.shape}")
        err = float(np.abs(r - g).max())
        worst[o.name] = err
        if not np.allclose(g, r, atol=params["atol"], rtol=params["rtol"]):
            raise StageError("trace", f"ONNX output {o.name!r} differs from PyTorch on the evaluation data: max abs "
                                      f"error {err:.3g} exceeds atol={params['atol']}, rtol={params['rtol']}")
    np.savez(out_dir / OUTPUT, **{f"out{i}": r for i, r in enumerate(ref)})
    per_output = metrics.reference_values(spec, ref, evaluation)  # the outputs judged by a drop
    value = per_output.get(spec.outputs[0].name)  # None: the first output is judged by a floor (sqnr)
    return {"metric": spec.metric, "value": value, "outputs": per_output,
            "also": metrics.extra(spec.extra_metrics, ref, evaluation, ref, spec), "onnx_vs_torch_max_abs_error": worst,
            "samples": int(len(evaluation[names[0]]))}


def load(entry_path) -> list:
    import numpy as np

    with np.load(entry_path / OUTPUT, allow_pickle=False) as z:
        return [z[f"out{i}"] for i in range(len(z.files))]


# ---- declaration (stages/__init__.py) ------------------------------------------------------------------------
def spec_params(spec) -> dict:
    return {"atol": spec.trace_atol, "rtol": spec.trace_rtol, "metric": spec.metric, "labels_key": spec.labels_key,
            "also": list(spec.extra_metrics)}  # + the outputs' metrics (the pipeline's metric_params)


def needs(params) -> tuple:
    return ("model", "fp32", "evaluation", "metric_params")


def build(inp, params, out_dir) -> dict:
    return run(inp.model, inp.fp32, params, out_dir, inp.evaluation, inp.spec)
