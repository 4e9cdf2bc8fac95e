"""tflite: fp32 ONNX -> full-integer int8 TFLite (int8 input and output) with onnx2tf, plus the fp32 TFLite
baseline from the same conversion.

onnx2tf imports TensorFlow, rewrites its input file in place, can crash the process (SIGSEGV on some RNNs)
and, offline, tries to download sample data for 3-channel image models. So it runs in a child process
(tflite_worker) with a time limit, on a private copy of the ONNX file, in a scratch directory that holds a
stand-in for the sample-data file it would otherwise download.

Routes: the graph's ops choose how it is converted. A plain graph takes one route (onnx2tf int8, as always).
GELU's Erf (a Flex op LiteRT cannot run) is rewritten on the private copy (rewrites.py, proven against the
original on the calibration inputs first); RNN ops get onnx2tf's -eru (without it the int8 path crashed), with
the recurrence unrolled in ONNX as the next route. Each route must also load and run on LiteRT (in the child)
before it counts, and its float32 model must compute what the ONNX graph computes on a few calibration samples
(onnx2tf infers layouts from shapes and can silently build another function). The first route that works makes
the artifact; the meta records it and every route that failed. When none works the stage fails naming the op,
the node, the routes tried and what the user can do. `convert.routes = "plain"` converts the graph as it is, once.
"""

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from ..debris import scratch_dir
from ..errors import StageError
from ..executors import process
from ..executors.base import ExecutorError
from ..options import SCHEMAS, check_table, defaults
from . import tflite_plan
from .tflite_worker import FP32_MISMATCH, LITERT_FAILED  # the --check child's verdicts

NAME = "tflite"
VERSION = 7  # 7: unstamped again (the metadata stage stamps a copy); meta onnx_output_shapes for that stamp
LIBRARIES = ("onnx2tf", "tensorflow", "onnx", "onnxsim", "numpy")
OUTPUT = "model.int8.tflite"
BASELINE = "model.fp32.tflite"
CHILD_PROCESS = True  # its converter runs in child processes: the pipeline runs its target in a second lane
# routes: "auto" picks rewrites and flags from the graph's ops (below); "plain" converts the graph as it is, once.
# split_at + app_postprocess: the artifact ends at these ONNX tensors (a detector's raw heads) and the app runs the
# rest (decode, NMS) in float; the build judges the artifact through that app function (validation/target.py).
DEFAULTS = defaults("convert")  # options, types and defaults: options.SCHEMAS["convert"]
# onnx2tf looks for this file in its working directory before downloading it (STACK.md, offline trap).
SAMPLE_DATA = "calibration_image_sample_data_20x128x128x3_float32.npy"


def params_for(table: dict, path, prefix="convert") -> dict:
    from ..errors import SpecError

    if table.get("converter", "onnx2tf") == "onnx2tf":
        from ..spec import _Table

        _Table(path, prefix, table).reject_unknown(set(SCHEMAS["convert"]))  # litert-torch's options: not here
    check_table(path, prefix, table, "convert")  # unknown keys, types, allowed values
    params = {**DEFAULTS, **table}
    if params["converter"] != "onnx2tf":
        raise SpecError(path, f"{prefix}.converter", f"unknown converter {params['converter']!r} (known: onnx2tf)")
    if params["routes"] not in ("auto", "plain"):
        raise SpecError(path, f"{prefix}.routes", f"must be one of auto, plain, got {params['routes']!r}")
    tflite_plan.check_params(params, path, prefix)
    _check_split(params, path, prefix)
    return params


def _check_split(params, path, prefix):
    from ..errors import SpecError
    from ..spec import is_callable_ref

    split, post = params["split_at"], params["app_postprocess"]
    if not isinstance(split, list) or not all(isinstance(v, str) and v for v in split):
        raise SpecError(path, f"{prefix}.split_at", f"must be a list of ONNX tensor names, got {split!r}")
    if not isinstance(post, str) or (post and not is_callable_ref(post)):
        raise SpecError(path, f"{prefix}.app_postprocess", f"must be 'package.module:function', got {post!r}")
    if bool(split) != bool(post):
        missing = "app_postprocess" if split else "split_at"
        raise SpecError(path, f"{prefix}.{missing}", "is required with "
                        + ("split_at (the app's code that turns the artifact's outputs into the spec's outputs)"
                           if split else "app_postprocess (the tensors where the artifact ends)"))
    if split and params["precision"] == "auto":
        raise SpecError(path, f"{prefix}.precision", '"auto" does not take a split artifact (split_at) yet; '
                                                     'use "full_integer"')


def split_graph(fp32_path, names, dest, target_name):
    """The fp32 graph from its inputs up to the tensors `names` (the artifact's new outputs), saved at `dest`."""
    import onnx

    model = onnx.load(str(fp32_path))
    known = {o for n in model.graph.node for o in n.output}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise StageError(NAME, f"convert.split_at: {', '.join(map(repr, unknown))} is not a tensor of the traced "
                               f"graph (tensors that feed NonMaxSuppression etc. are named like "
                               f"'/heatmap/Conv_output_0')", target_name)
    # The nodes the named tensors depend on, in graph order (onnx.utils.Extractor needs inferred shapes for them,
    # which shape inference does not give past ops like NonMaxSuppression).
    producer = {o: n for n in model.graph.node for o in n.output}
    needed, stack = set(), list(names)
    while stack:
        n = producer.get(stack.pop())
        if n is not None and id(n) not in needed:
            needed.add(id(n))
            stack.extend(n.input)
    nodes = [n for n in model.graph.node if id(n) in needed]
    used = {i for n in nodes for i in n.input}
    # Outputs under plain names: the converter keeps those (a '/'-path name comes back altered, and outputs are
    # then matched by position, in another order).
    clean = {n: re.sub(r"\W+", "_", n).strip("_") or f"output{i}" for i, n in enumerate(names)}
    nodes += [onnx.helper.make_node("Identity", [n], [clean[n]], name=f"split_output_{i}")
              for i, n in enumerate(names)]
    graph = onnx.helper.make_graph(nodes, model.graph.name, [i for i in model.graph.input if i.name in used],
                                   [onnx.helper.make_tensor_value_info(clean[n], onnx.TensorProto.FLOAT, None)
                                    for n in names],
                                   [t for t in model.graph.initializer if t.name in used])
    cut = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    cut = onnx.shape_inference.infer_shapes(cut)
    onnx.checker.check_model(cut)
    onnx.save(cut, str(dest))
    return {"artifact_outputs": [clean[n] for n in names], "split_at": list(names),
            "dropped_nodes": sorted({n.op_type for n in model.graph.node} - {n.op_type for n in cut.graph.node})}


def nhwc(a):
    """Model layout -> TFLite layout: channels move last for rank 3 and 4 (onnx2tf's convention)."""
    if a.ndim == 4:
        return a.transpose(0, 2, 3, 1)
    if a.ndim == 3:
        return a.transpose(0, 2, 1)
    return a


class _RouteFailed(Exception):
    def __init__(self, cause, op=None, node=None, advice=None):
        super().__init__(cause)
        self.cause, self.op, self.node, self.advice = cause, op, node, advice


MISMATCH = ("onnx2tf infers tensor layouts from shapes and can pick the wrong axis where two dimensions are equal "
            "(an RNN's hidden size and sequence length, a square feature map and its channels): make them differ, "
            "or drop this target")


RNN_OPS = ("LSTM", "GRU", "RNN")


def plan_routes(op_types) -> list:
    """The routes to try, in order, for a graph with these op types: {"label", "rewrites", "flags", "why"}."""
    ops = set(op_types)
    gelu = ["gelu-tanh"] if ops & {"Erf", "Gelu"} else []
    rnn = sorted(ops & set(RNN_OPS))
    routes = []
    if rnn:
        routes.append(_route(gelu, {"enable_rnn_unroll": True},
                             f"{'/'.join(rnn)}: onnx2tf's int8 path crashed (SIGSEGV) on RNN ops without -eru"))
        if set(rnn) <= {"LSTM", "GRU"}:
            routes.append(_route(gelu + ["rnn-unroll"], {}, "the recurrence written out in ONNX ops"))
    else:
        routes.append(_route(gelu, {}, "Erf becomes a Flex op LiteRT cannot run" if gelu else "plain graph"))
    if gelu:
        routes += [_route(["gelu-sigmoid"] + r["rewrites"][1:], r["flags"], "coarser GELU form") for r in list(routes)]
    return routes


def _route(rewrites, flags, why):
    label = "onnx2tf int8" + (" -eru" if flags.get("enable_rnn_unroll") else "")
    if rewrites:
        label += " + rewrite " + ", ".join(rewrites)
    return {"label": label, "rewrites": list(rewrites), "flags": dict(flags), "why": why}


def run(fp32_path, params: dict, out_dir, calibration: dict, spec, target_name, judge=None) -> dict:
    """judge: (evaluation, reference, budget) for the precision plan (convert.precision = "auto")."""
    if not params.get("split_at"):
        return _convert(fp32_path, params, out_dir, calibration, spec, target_name, judge, None)
    # The artifact ends where the app's post-processing starts: convert the graph cut there (a scratch folder a
    # killed build's successor reclaims).
    with scratch_dir("toolchain-split") as cut_dir:
        cut = Path(cut_dir) / "model.split.onnx"
        split = split_graph(fp32_path, params["split_at"], cut, target_name)
        split["app_postprocess"] = params["app_postprocess"]
        return _convert(cut, params, out_dir, calibration, spec, target_name, judge, split)


def _convert(fp32_path, params, out_dir, calibration, spec, target_name, judge, split) -> dict:
    import numpy as np
    import onnx

    model = onnx.load(str(fp32_path))
    if params.get("routes", "auto") == "auto":
        routes = plan_routes(n.op_type for n in model.graph.node)
    else:
        routes = [_route([], {}, 'convert.routes = "plain": the graph as it is')]
    tried = []
    with scratch_dir("toolchain-onnx2tf") as scratch:
        scratch = Path(scratch)
        np.save(scratch / SAMPLE_DATA, np.zeros((20, 128, 128, 3), np.float32))
        calib = []
        shapes = []
        for t in spec.inputs:
            arr = calibration[t.name]
            path = scratch / f"calib_{len(calib)}.npy"
            np.save(path, nhwc(arr).astype(np.float32))
            calib.append([t.name, str(path), 0.0, 1.0])  # data is already normalised: mean 0, std 1
            shapes.append(f"{t.name}:" + ",".join(str(d) for d in (1, *t.shape[1:])))
        check_data = _check_data(model, calibration, spec, scratch)
        for route in routes:
            work = scratch / f"route{len(tried)}"
            work.mkdir()
            try:
                check = _prepare_copy(fp32_path, model, route, work / "model.onnx", calibration, spec, target_name)
                job = {"onnx": str(work / "model.onnx"), "out": str(work / "out"), "calibration": calib,
                       "shapes": shapes, "per_channel": params["per_channel"],
                       "extra": {**route["flags"], **params["extra_flags"]}, "check": check_data}
                log = _run_worker(job, scratch, params["timeout_s"], target_name)
            except _RouteFailed as e:
                tried.append({"route": route["label"], "status": "failed", "cause": e.cause, "op": e.op,
                              "node": e.node, "advice": e.advice})
                continue
            produced = {"int8": work / "out" / "model_full_integer_quant.tflite",
                        "fp32": work / "out" / "model_float32.tflite"}
            if not produced["int8"].is_file() or not produced["fp32"].is_file():
                tried.append({"route": route["label"], "status": "failed",
                              "cause": "onnx2tf finished without writing the full-integer model: " + _cause(log)})
                continue
            tried.append({"route": route["label"], "status": "converted and ran on LiteRT"})
            break
        else:
            raise StageError(NAME, _failure(tried, len(routes), model), target_name)
        plan = None
        if params["precision"] == "auto":
            produced["int8"], plan = tflite_plan.run(produced["int8"], work / "out", calib, params["per_channel"],
                                                     params, spec, *judge, scratch, target_name)
        shutil.copyfile(produced["int8"], out_dir / OUTPUT)
        shutil.copyfile(produced["fp32"], out_dir / BASELINE)
    full = plan is None or plan["full_integer"]
    meta = {"converter": "onnx2tf", "calibration_samples": int(len(calibration[spec.inputs[0].name])),
            "route": "onnx -> onnx2tf -> tflite (" + ("full integer" if full else "int8 with float fallback")
                     + ", int8 I/O)", "input_shapes": shapes, "full_integer": full,
            # the converted graph's output shapes: the metadata stage names the outputs onnx2tf transposed
            "onnx_output_shapes": _output_shapes(model)}
    if plan is not None:
        meta["plan"] = plan
    if split is not None:
        meta["split"] = {**split, "note": "the artifact ends at split_at; the app runs app_postprocess on its "
                                          "outputs (float), and the build judges the artifact through it"}
        meta["route"] += f", ends at {', '.join(split['artifact_outputs'])} (post-processing in the app)"
    if len(routes) > 1 or route["rewrites"] or route["flags"]:  # a plain graph's meta is as it always was
        meta.update(route_label=route["label"], route_why=route["why"], onnx2tf_flags=route["flags"],
                    routes_tried=tried, rewrites=check)
    return meta


def _output_shapes(model):
    """The graph's output shapes (batch first; None where a dimension is not fixed), to name transposed outputs."""
    shapes = []
    for vi in model.graph.output:
        dims = vi.type.tensor_type.shape.dim
        if not dims or any(not d.HasField("dim_value") for d in list(dims)[1:]):
            return None
        shapes.append([1, *(d.dim_value for d in list(dims)[1:])])
    return shapes


CHECK_SAMPLES = 4


def _check_data(model, calibration, spec, scratch) -> dict:
    """The first calibration samples and the fp32 ONNX graph's outputs on them (ONNX Runtime), for the --check
    child to hold the converted float32 model against."""
    import numpy as np

    from ..rewrites import run_onnx

    feeds = {t.name: np.asarray(calibration[t.name][:CHECK_SAMPLES]) for t in spec.inputs}
    try:
        outs = run_onnx(model, feeds)
    except Exception:  # noqa: BLE001 - ONNX Runtime cannot run the graph: the check only runs the models then
        return None
    path = scratch / "check.npz"
    np.savez(path, **{f"in{i}": feeds[t.name] for i, t in enumerate(spec.inputs)},
             **{f"out{i}": o.astype(np.float32) for i, o in enumerate(outs)})
    return {"data": str(path), "inputs": [t.name for t in spec.inputs],
            "outputs": [o.name for o in model.graph.output]}


def _prepare_copy(fp32_path, model, route, dest, calibration, spec, target_name):
    """The route's private ONNX copy: the fp32 file as is, or rewritten and proven equivalent first."""
    if not route["rewrites"]:
        shutil.copyfile(fp32_path, dest)  # onnx2tf rewrites its input: never hand it a cached artifact
        return None
    import onnx

    from .. import rewrites

    try:
        rewritten, records = rewrites.apply(model, route["rewrites"])
        feeds = {t.name: calibration[t.name] for t in spec.inputs}
        check = rewrites.verify(model, rewritten, feeds, route["rewrites"])
    except rewrites.RewriteError as e:
        raise _RouteFailed(str(e)) from None
    missing = [r["rewrite"] for r in records if not r["nodes"]]
    if missing:
        raise _RouteFailed(f"rewrite {', '.join(missing)} found nothing to rewrite")
    onnx.save(rewritten, str(dest))
    return {"applied": records, "check": check}


ADVICE = {
    "Erf": "use the tanh form of GELU in the model (nn.GELU(approximate='tanh')), or drop this target",
    "Gelu": "use the tanh form of GELU in the model (nn.GELU(approximate='tanh')), or drop this target",
    "LSTM": "give the sequence a fixed length and use a forward, single-direction LSTM with default activations "
            "(the rnn-unroll route takes those), or write the recurrence with Linear layers",
    "GRU": "give the sequence a fixed length and use a forward, single-direction GRU with default activations "
           "(the rnn-unroll route takes those), or write the recurrence with Linear layers",
}


def _failure(tried, n_routes, model) -> str:
    """One paragraph: what failed where, every route tried, what the user can do."""
    last = tried[-1]
    if n_routes == 1:
        text = last["cause"]
    else:
        steps = "; ".join(f"[{i + 1}] {t['route']}: {t['cause']}" for i, t in enumerate(tried))
        text = f"no conversion route made a runnable full-integer model. Routes tried: {steps}"
    op, node = next(((t.get("op"), t.get("node")) for t in tried if t.get("op")), (None, None))
    if op is None:
        advice = next((t["advice"] for t in tried if t.get("advice")), None)
        return f"{text}. What you can do: {advice or 'simplify the model around the failing part, or drop this target'}" \
               "; the other targets still build"
    onnx_op = op[4:] if op.startswith("Flex") else op
    nodes = [node] if node else [n.name for n in model.graph.node if n.op_type == onnx_op][:4]
    where = f"ONNX op {onnx_op}" + (f" (node {', '.join(nodes)})" if nodes else "")
    if op.startswith("Flex"):
        where += f", which became the TensorFlow Flex op {op} that LiteRT's builtin kernels cannot run"
    advice = ADVICE.get(onnx_op) or f"replace the {onnx_op} op in the model with ops onnx2tf converts to TFLite " \
                                    "builtins, or drop this target"
    if n_routes > 1 or "could not be converted" not in text:
        text += f". Stopped at {where}"
    return f"{text}. What you can do: {advice}; the other targets still build"


def _litert_summary(msg: str) -> str:
    flex = sorted(set(re.findall(r"\((Flex\w+)\)", msg)))
    if "Select TensorFlow op" in msg:
        return f"it holds TensorFlow Flex op(s) {', '.join(flex) or ''} that LiteRT's builtin kernels cannot run"
    return msg


def _run_worker(job, scratch, timeout_s, target_name) -> str:
    env = dict(os.environ)
    # onnx2tf runs onnxsim as a command: without the venv's bin on PATH it silently skips simplification.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    job_path = scratch / "job.json"
    job_path.write_text(json.dumps({**job, "parent_pid": os.getpid()}))
    started = time.monotonic()
    try:  # the one child-process runner (executors/process.py): time limit, dies with us, group killed
        proc = process.run_child([sys.executable, "-m", "toolchain.stages.tflite_worker", str(job_path)],
                                 "onnx2tf", timeout_s, env=env, cwd=scratch)
    except ExecutorError:
        raise StageError(NAME, f"onnx2tf did not finish within {timeout_s} s (convert.timeout_s); killed",
                         target_name) from None
    log = proc.log
    op, node = _where(log)
    if proc.returncode < 0:
        raise _RouteFailed(f"the onnx2tf converter process died with {proc.signal}; {_cause(log)}", op, node)
    if proc.returncode != 0:
        raise _RouteFailed(f"onnx2tf failed: {_cause(log)}", op, node)
    # What onnx2tf wrote must load and run on LiteRT, in a process without TensorFlow (see tflite_worker).
    left = max(timeout_s - (time.monotonic() - started), 1)
    try:
        chk = process.run_child([sys.executable, "-m", "toolchain.stages.tflite_worker", "--check", str(job_path)],
                                "LiteRT check", left, env=env, cwd=scratch)
    except ExecutorError:
        raise StageError(NAME, f"onnx2tf did not finish within {timeout_s} s (convert.timeout_s); killed while "
                         "running the converted model on LiteRT", target_name) from None
    if chk.returncode == FP32_MISMATCH:
        line = [ln for ln in chk.log.splitlines() if ln.startswith("FP32_MISMATCH")][-1]
        raise _RouteFailed("the converted float32 model does not compute what the ONNX graph computes ("
                           + line.split(":", 1)[1].strip() + "): onnx2tf mistranslated the graph", advice=MISMATCH)
    if chk.returncode != 0:
        out = chk.log
        msg = (_litert_error(out) if chk.returncode == LITERT_FAILED else
               f"LiteRT died with {chk.signal}" if chk.returncode < 0 else _cause(out))
        flex = re.search(r"\((Flex\w+)\)", msg)
        raise _RouteFailed(f"the converted model does not run on LiteRT: {_litert_summary(msg)}",
                           flex.group(1) if flex else None)
    return log


def _litert_error(log: str) -> str:
    lines = [ln for ln in _ANSI.sub("", log).splitlines() if ln.startswith("LITERT_CHECK_FAILED")]
    return lines[-1].split(":", 1)[1].strip()[:400] if lines else "no message"


def _where(log: str):
    text = _ANSI.sub("", log)
    op = re.findall(r"onnx_op_type:\s*(\S+)", text)
    node = re.findall(r"onnx_op_name:\s*(\S+)", text)
    return (op[-1] if op else None), (node[-1] if node else None)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _cause(log: str) -> str:
    """The ONNX op and node onnx2tf stopped at, and its error line, pulled from its log."""
    text = _ANSI.sub("", log)
    op = re.findall(r"onnx_op_type:\s*(\S+)", text)
    node = re.findall(r"onnx_op_name:\s*(\S+)", text)
    errors = [ln.strip() for ln in text.splitlines()
              if re.search(r"(Error|ERROR|error:|Exception)", ln) and "computation placer" not in ln
              and "Unable to register" not in ln]
    parts = []
    if op:
        parts.append(f"ONNX op {op[-1]}" + (f" (node {node[-1]})" if node else "") + " could not be converted")
    if errors:
        parts.append(errors[-1][:300])
    return "; ".join(parts) or "no error message (see onnx2tf output)"


# ---- declaration (stages/__init__.py): the onnx2tf route -----------------------------------------------------
TABLE = SCHEMA = "convert"


def applies(target) -> bool:
    return target.table(TABLE).get("converter", "onnx2tf") != "litert-torch"


def needs(params) -> tuple:
    plan = ("evaluation", "reference", "budget") if params["precision"] == "auto" else ()  # judged variants
    if plan and params.get("speed_search", True):  # speed is searched on the ARM cost model: its identity keys it
        plan += ("arm_cost",)
    return ("fp32", "calibration", *plan)


def build(inp, params, out_dir) -> dict:
    judge = (inp.evaluation, inp.reference, inp.budget) if params["precision"] == "auto" else None
    if judge is not None and params.get("speed_search", True):
        params = {**params, "arm_cost": inp.arm_cost}
    return run(inp.fp32, params, out_dir, inp.calibration, inp.spec, inp.target_name, judge=judge)
