"""Validate one target's artifact on its real runtime: task metric, agreement with fp32 PyTorch, non-finite
outputs, and latency interleaved against the target's fp32 baseline in the same process."""

import numpy as np

from ..data import batches
from ..hostinfo import host
from ..runtimes import RuntimeFellBack, RuntimeUnavailable, open_artifact, runtime
from . import latency, metrics

EVAL_BATCH = 64


def outputs_on(session, evaluation, input_names) -> list:
    size = EVAL_BATCH if session.batchable else 1
    chunks = [session.run(feed) for feed in batches(evaluation, input_names, size)]
    return [np.concatenate(parts).astype(np.float32) for parts in zip(*chunks)]


def accuracy(outputs, evaluation, reference, spec, ref_values) -> dict:
    """Every output's figure under its own metric (`outputs`, what the gate judges), the first output's under
    the top-level keys `metric` / `metric_drop` (the report's older contract), and agreement figures."""
    per_output = metrics.per_output(spec, outputs, reference, evaluation, ref_values)
    first = per_output[spec.outputs[0].name]
    out = {"metric": first["value"], "outputs": per_output,
           "agreement": metrics.agreement(outputs, reference, classes=spec.metric == "top1"),
           "non_finite_outputs": metrics.non_finite(outputs)}
    if "reference_value" in first:  # judged by a drop; a floor metric (sqnr) has no drop to report
        out["metric_drop"] = first["drop"]
    if spec.extra_metrics:
        out["metrics"] = metrics.extra(spec.extra_metrics, outputs, evaluation, reference, spec)
    return out


class AppPostprocessed:
    """A split artifact (convert.split_at) as the app uses it: the runtime's outputs, then the app's own
    post-processing (convert.app_postprocess) -> the spec's outputs. Timing covers the artifact alone."""

    def __init__(self, session, fn):
        self.session, self.fn = session, fn
        self.batchable = session.batchable
        self.timing_method = session.timing_method + " (artifact only; the app's post-processing is not timed)"
        self.providers = getattr(session, "providers", [])

    def run(self, feed):
        return [np.asarray(o) for o in self.fn(self.session.run(feed))]

    def timer(self, feed):
        return self.session.timer(feed)

    def io_details(self):
        return self.session.io_details()


def app_postprocess(target, spec):
    """The split artifact's app-side function, or None when the artifact computes the spec's outputs itself."""
    ref = target.table("convert").get("app_postprocess") if target.runtime == "litert" else None
    if not ref:
        return None
    from ..imports import import_ref

    return import_ref(ref, spec.python_path, spec.path, f"targets.{target.name}.convert.app_postprocess")


def run(target, artifact, baseline, evaluation, reference, spec, ref_value, unpruned=None) -> dict:
    names = [t.name for t in spec.inputs]
    result = {"host": host(), "threads": target.threads}
    shapes = [r.shape[1:] for r in reference]
    onames = [o.name for o in spec.outputs]
    post = app_postprocess(target, spec)
    if post is not None:  # the artifact's outputs are not the spec's: the app's function maps them
        shapes = onames = None
        result["app_postprocess"] = {"function": target.table("convert")["app_postprocess"],
                                     "split_at": list(target.table("convert")["split_at"]),
                                     "note": "judged on the app's post-processing of the artifact's outputs; "
                                             "latency covers the artifact only"}
    if target.runtime == "onnxruntime":
        from ..executors.config import off_host

        if off_host(target):  # judged on the executor's own ONNX Runtime (a GPU host over ssh)
            from .ort_on_executor import judge

            return judge(target, artifact, baseline, evaluation, reference, spec, ref_value, unpruned, result)
    try:
        session = open_artifact(target, artifact, output_shapes=shapes, output_names=onames, input_names=names)
        if post is not None:
            session = AppPostprocessed(session, post)
    except RuntimeUnavailable as e:
        # Still prove what can be proven here: the artifact's agreement with fp32, run on the CPU provider.
        result.update(status="skipped", reason=str(e))
        if target.runtime == "onnxruntime":
            result["cpu_check"] = cpu_check(target, artifact, evaluation, reference, spec, ref_value)
        return result
    except RuntimeFellBack as e:
        result.update(status="failed", reason=f"runtime fell back: {e}")
        return result
    host_outputs = outputs_on(session, evaluation, names)
    host_accuracy = accuracy(host_outputs, evaluation, reference, spec, ref_value)
    result.update(host_accuracy)
    result["device"] = _device(target, session)
    result["providers"] = list(getattr(session, "providers", [target.runtime]))
    if hasattr(session, "io_details"):
        io = session.io_details()
        if post is None and len(io["outputs"]) == len(spec.outputs):  # output names are not always kept by the converter
            for d, o in zip(io["outputs"], spec.outputs):
                d["name"] = o.name
        if len(io["inputs"]) == len(spec.inputs):  # say so where the converter changed an input's layout
            from ..runtimes.litert import layout_note

            for d, t in zip(io["inputs"], spec.inputs):
                note = layout_note((1, *t.shape[1:]), d["shape"])
                if note:
                    d["layout"] = note
            if shapes and len(io["outputs"]) == len(shapes):  # and where an output comes back transposed
                for d, s in zip(io["outputs"], shapes):
                    note = layout_note((1, *s), d["shape"], output=True)
                    if note:
                        d["layout"] = note
        result["io"] = io
    if target.runtime == "litert" and result["host"]["arch"] not in ("aarch64", "arm64"):
        result["latency_note"] = (f"measured with LiteRT's {result['host']['arch']} kernels on this host, "
                                  "not on an ARM device")
    if runtime(target.runtime).judged_on_executor:  # judged where it will run (toolchain/executors)
        from .on_executor import judge

        judge(target, artifact, baseline, evaluation, reference, spec, ref_value, result, host_outputs, session,
              accuracy)
        if result.get("executor", {}).get("fallback"):
            return _fell_back_to_host(result, host_accuracy)

    lat = target.latency
    batch = min(lat["batch"], len(evaluation[names[0]]))
    feed = {n: evaluation[n][:batch] for n in names}

    def opener(path, options=None):
        return open_artifact(target, path, output_shapes=shapes, output_names=onames, input_names=names,
                             options=options)

    chosen, record, timed = latency.against_baseline(session.timer(feed), opener, baseline, feed, lat,
                                                     target.tables.get("runtime_options"), artifact, unpruned,
                                                     f"target {target.name}", target.threads)
    if record:
        result["runtime_options"] = record
        if latency.differs_from_default(chosen):
            # The app runs with the chosen options: judge what it will compute with them, not with the defaults
            # (another optimization level fuses other nodes, so int8 results can differ in the last bits).
            chosen_session = opener(artifact, chosen)
            if post is not None:
                chosen_session = AppPostprocessed(chosen_session, post)
            result.update(accuracy(outputs_on(chosen_session, evaluation, names), evaluation, reference, spec,
                                   ref_value))
        record["accuracy_measured_with"] = (chosen or {}).get("name", "default")
    record_latency(result, timed, (chosen or {}).get("name", "default"), batch, lat, session.timing_method)
    if "device_latency" in result:  # measured on the device itself (ssh executor): those figures count
        from .on_executor import prefer_device_latency

        prefer_device_latency(result)
    if target.runtime == "onnxruntime" and target.precision == "int8":  # what really runs int8 (NOT FASTER notes)
        from ..runtimes.onnxruntime import optimized_op_counts

        result["optimized_op_counts"] = optimized_op_counts(
            artifact, (chosen or {}).get("graph_optimization", "all"), target.threads)
    return result


def record_latency(result, timed, chosen_name, batch, lat, timing_method):
    """The interleaved timings (latency.against_baseline) into the result's latency keys."""
    if "unpruned" in timed:
        result.update(unpruned_latency_ms=timed["unpruned"],
                      speedup_vs_unpruned=timed["unpruned"]["p50"] / timed["artifact"]["p50"])
    if "baseline_same_options" in timed:
        result["baseline_same_options_latency_ms"] = timed["baseline_same_options"]
    result.update(latency_ms=timed["artifact"], baseline_latency_ms=timed["baseline"],
                  latency_ratio=timed["artifact"]["p50"] / timed["baseline"]["p50"],
                  latency_protocol={"batch": batch, "warmup": lat["warmup"], "runs": lat["runs"],
                                    "interleaved_with": "fp32 baseline (default runtime options)",
                                    "artifact_runtime_options": chosen_name, "timing": timing_method})


def _fell_back_to_host(result, host_accuracy) -> dict:
    """ARM asked, only this host's LiteRT kernels here (no emulator, no device): not a pass, as CUDA without a GPU
    is not. The host figures stay as a check (`cpu_check`), so a gate they already miss is still reported."""
    for k in host_accuracy:
        result.pop(k, None)
    arch = result["host"]["arch"]
    result["cpu_check"] = {**host_accuracy, "where": f"host LiteRT ({arch} kernels)",
                           "note": f"run on LiteRT's {arch} kernels on this host for agreement only; "
                                   "not a pass for the target"}
    result.update(status="skipped", reason=f"not judged on ARM kernels: {result['executor']['reason']}; a target "
                                           "file with executor = \"local\" accepts host LiteRT instead")
    return result


def cpu_check(target, artifact, evaluation, reference, spec, ref_value) -> dict:
    """An ONNX artifact whose provider is not there: its agreement on this host's CPU provider, never a pass."""
    names = [t.name for t in spec.inputs]
    cpu = open_artifact(target, artifact, providers=["CPUExecutionProvider"])
    check = accuracy(outputs_on(cpu, evaluation, names), evaluation, reference, spec, ref_value)
    check.update(where="the CPU provider", note="run on CPUExecutionProvider for agreement only; not a pass for "
                                                   "the target")
    return check


def _device(target, session):
    from ..runtimes import device_name

    return device_name(target, session)
