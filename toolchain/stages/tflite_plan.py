"""The arm64 precision plan (convert.precision = "auto"): full-integer int8 where it holds the accuracy budget,
int8 with float fallback for the ops that break it.

The full-integer model onnx2tf wrote is judged first, on LiteRT, against the same budget the validate stage will
apply. If it holds, it ships unchanged. If not, the shared search (plan_search.py) runs on TFLite variants made
from one calibration (tflite_variants.py): output cosine per op with only that op int8, then the most sensitive
ops kept float until the budget holds, then every op the budget did not need given back. The artifact keeps its
int8 input and output, but it is no longer full-integer: the meta says so and lists the float ops, which matters
to a user whose accelerator (an NPU, an Edge TPU) runs only integer ops.

Speed is searched on the ARM cost model (arm_cost.py: instruction counts on a pinned core under qemu, where
`make arm-emulator` set it up), never on this host's LiteRT x86 kernels (MobileNet int8 runs 2.4x slower than
fp32 on them, which would decide for the wrong CPU): the candidates are onnx2tf's full-integer model (where it
holds the budget), TensorFlow's quantizer with the accuracy plan's float ops, and that plan with each kind of
int8 op kept float; whatever is cheaper by at least 2% and still holds the budget is kept (the kinds that pay
are then combined and counted again). Counts are deterministic, so the plan rebuilds byte-identically; every
count goes into the plan's meta. Without the emulator the plan says speed was not searched.
"""

import json
import os
import selectors
import sys
import time
from pathlib import Path

from ..errors import StageError
from ..executors import process
from ..options import defaults

DEFAULTS = {k: v for k, v in defaults("convert").items()
            if k in ("precision", "force_float", "force_int8", "plan_time_budget_s", "speed_search")}
PRECISIONS = ("full_integer", "auto")
# Ops that only move data: no arithmetic for int8 to get wrong, so they are not units of the search.
LAYOUT_OPS = {"PAD", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "GATHER", "SLICE",
              "STRIDED_SLICE", "SPLIT", "SPLIT_V", "PACK", "UNPACK", "QUANTIZE", "DEQUANTIZE", "SHAPE"}
SPEED_NOTE = ("not searched: the ARM cost model is not set up here (toolchain arm-emulator), this host is not an ARM "
              "CPU, and LiteRT's x86 kernels would decide for the wrong one; pin ops with convert.force_float to keep "
              "slow int8 ops float")
ARM_MARGIN = 0.98  # a variant must cost at least 2% fewer instructions to be kept (counts are deterministic)


class VariantServer:
    """The tflite_variants child: make(denylist, path) writes one TFLite variant."""

    def __init__(self, job, scratch: Path, timeout_s, target_name):
        self.timeout_s, self.target_name = timeout_s, target_name
        job_path = scratch / "variants.json"
        job_path.write_text(json.dumps({**job, "parent_pid": os.getpid()}))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.log = open(scratch / "variants.log", "w+")
        # the one child-process runner (executors/process.py): dies with us, its process group stopped
        self.proc = process.start([sys.executable, "-m", "toolchain.stages.tflite_variants", str(job_path)],
                                  env=env, cwd=scratch, stderr=self.log)
        self.ops = self._read()["ops"]

    def _read(self) -> dict:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(self.timeout_s)
        sel.close()
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.log.flush()
            self.log.seek(0)
            tail = " ".join(self.log.read().split())[-300:]
            why = "did not answer in time" if not ready else f"exited ({self.proc.poll()})"
            self.close()
            raise StageError("tflite", f"precision plan: the TFLite quantizer child {why}: {tail}", self.target_name)
        return json.loads(line)

    def make(self, denylist, path) -> Path:
        self.proc.stdin.write(json.dumps({"denylist": sorted(denylist), "path": str(path)}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise StageError("tflite", f"precision plan: TensorFlow's quantizer refused a variant: {answer['error']}",
                             self.target_name)
        return Path(path)

    def close(self):
        if self.log.closed:
            return
        process.stop(self.proc)
        from ..verbosity import show_log

        self.log.flush()
        self.log.seek(0)
        show_log("TFLite quantizer (precision plan)", self.log.read())  # -v: its whole log
        self.log.close()


def run(full_integer: Path, saved_model: Path, calib, per_channel, params, spec, evaluation, reference, budget,
        scratch: Path, target_name) -> tuple[Path, dict]:
    """(the model to ship, the plan's meta). params["arm_cost"]: the cost model (arm_cost.model_for) or None."""
    from ..runtimes.litert import LiteRTSession
    from ..validation.target import outputs_on
    from . import plan_search

    t0 = time.monotonic()
    deadline = t0 + params["plan_time_budget_s"]
    names = [t.name for t in spec.inputs]
    shapes, onames = [r.shape[1:] for r in reference], [o.name for o in spec.outputs]
    server = None

    class LiteRTBackend(plan_search.Backend):
        counter = 0

        def make(self, exclude=(), only=None):
            LiteRTBackend.counter += 1
            deny = ({tensor[n] for n in exclude} if only is None else
                    {o["tensor"] for o in server.ops} - {tensor[n] for n in only})
            return server.make(deny, scratch / f"variant{LiteRTBackend.counter}.tflite")

        def outputs(self, path, data):
            return outputs_on(LiteRTSession(path, 1, shapes, onames, names), data, names)

    def start_server():
        return VariantServer({"saved_model": str(saved_model), "calibration": calib, "per_channel": per_channel},
                             scratch, max(params["plan_time_budget_s"], 60), target_name)

    def fail(message):
        raise StageError("tflite", "convert." + message, target_name)

    backend = LiteRTBackend(spec, evaluation, reference, budget)
    before = backend.judge(full_integer)
    steps = [f"onnx2tf's full-integer model -> {before.text}"]
    plan = {"precision": params["precision"], "speed": SPEED_NOTE, "steps": steps,
            "before": plan_search.side("full integer (every op int8)", before)}
    cost = params.get("arm_cost") if params.get("speed_search", True) else None
    if not params.get("speed_search", True):
        plan["speed"] = "not searched: convert.speed_search = false"
    try:
        if before.ok and not params["force_float"]:
            steps.append("the budget holds with onnx2tf's full-integer model")
            if cost is None:
                plan.update(chosen="full integer", kept_float=[], full_integer=True, after=plan["before"],
                            search_seconds=round(time.monotonic() - t0, 1))
                return full_integer, plan
        server = start_server()
        nodes = [(f"{o['op']}#{o['index']}", o["op"]) for o in server.ops if o["op"] not in LAYOUT_OPS]
        tensor = {f"{o['op']}#{o['index']}": o["tensor"] for o in server.ops}
        forced_float = plan_search.resolve(params["force_float"], nodes, "force_float", fail)
        forced_int8 = plan_search.resolve(params["force_int8"], nodes, "force_int8", fail)
        if before.ok and not params["force_float"]:
            found = {"ok": True, "exclude": set(), "path": full_integer, "judged": before, "table": [],
                     "label": "onnx2tf full integer"}
        else:
            found = plan_search.meet_budget(backend, "int8 with float fallback", nodes, forced_float, forced_int8,
                                            deadline, steps)
            found["label"] = "accuracy plan"
        if found["ok"] and cost is not None:
            found = speed_search(backend, found, nodes, forced_int8, cost, evaluation, names, onames, shapes,
                                 deadline, plan, full_integer)
    finally:
        if server is not None:
            server.close()
    if not found["ok"]:
        raise StageError("tflite", f"precision plan: no int8 plan meets the budget ({plan_search.budget_text(budget)}): "
                         + "; ".join(steps[-3:]), target_name)
    kept = sorted(found["exclude"], key=lambda n: int(n.split("#")[1]))
    reasons = {n: "forced float by the spec" if n in forced_float else "accuracy: among the most sensitive ops"
               for n in kept}
    reasons.update(found.get("speed_reasons", {}))
    plan.update(
        chosen="full integer" if not kept else "int8 with float fallback",
        full_integer=not kept,
        kept_float=[{"node": n, "kind": n.split("#")[0], "tensor": tensor[n], "reason": reasons[n]} for n in kept],
        int8_compute_nodes=len(nodes) - len(kept), compute_nodes=len(nodes),
        after=plan_search.side("int8 with float fallback" if kept else "full integer", found["judged"]),
        sensitivity_top=found["table"][:10],
        search_seconds=round(time.monotonic() - t0, 1),
        node_names="TFLite op type and its index in the converted model (the ONNX node names do not survive "
                   "onnx2tf); convert.force_float / force_int8 take these or an op type such as CONV_2D")
    if "producer" in found:
        plan["chosen"] += f" ({found['producer']})"
    return found["path"], plan


def speed_search(backend, found, nodes, forced_int8, cost, evaluation, names, onames, shapes, deadline, plan,
                 full_integer) -> dict:
    """The plan that costs fewest instructions on the cost model's core among: the accuracy plan (`found`), the
    same float set through TensorFlow's quantizer (when `found` is onnx2tf's model), and the current plan with
    each kind of int8 op kept float; then the kinds that paid, combined. Only variants that hold the budget count.
    Every count goes into plan["speed"]. Returns `found` updated (path, exclude, judged, speed_reasons)."""
    from . import arm_cost

    core = cost["core"]
    record = {"cost_model": f"guest instructions per inference on qemu -cpu {core} (ARM cost model, XNNPACK, "
                            "1 thread, batch 1): deterministic, decides the plan", "core": core,
              "margin": f"a variant is kept when it costs <= {ARM_MARGIN}x the current plan", "counts": {},
              "steps": []}
    plan["speed"] = record
    exclude = set(found["exclude"])
    current = {"label": found["label"], "path": found["path"], "exclude": exclude, "judged": found["judged"]}
    cands = {current["label"]: current}
    if found["label"] == "onnx2tf full integer":
        path = backend.make(exclude)
        cands["TF quantizer, every op int8"] = {"label": "TF quantizer, every op int8", "path": path,
                                                "exclude": set(exclude), "judged": None}
    kinds = {}
    for n, k in nodes:
        if n not in exclude and n not in forced_int8:
            kinds.setdefault(k, set()).add(n)
    for k in sorted(kinds):
        label = f"{k} kept float"
        cands[label] = {"label": label, "path": backend.make(exclude | kinds[k]), "exclude": exclude | kinds[k],
                        "judged": None, "kind": k}

    reference = "onnx2tf full integer (misses the budget; counted for comparison)"
    if found["label"] != "onnx2tf full integer":
        cands[reference] = {"label": reference, "path": full_integer, "exclude": set(), "judged": None}

    def counted(group):
        if time.monotonic() > deadline:
            record["steps"].append(f"not counted (time budget spent): {', '.join(group)}")
            return {}
        got = arm_cost.count({lb: cands[lb]["path"] for lb in group}, evaluation, names, onames, shapes, core)
        record["counts"].update(got)
        return got

    got = counted(list(cands))
    if not got:
        return found
    base = got[current["label"]]
    record["steps"].append(f"{current['label']}: {base} instructions")
    best, paid = current, []
    for label in cands:
        if label in (current["label"], reference):
            continue
        c = cands[label]
        ratio = got[label] / base
        verdict = ratio <= ARM_MARGIN
        if verdict:
            c["judged"] = backend.judge(c["path"])
            verdict = c["judged"].ok
        record["steps"].append(f"{label}: {got[label]} instructions ({ratio:.3f}x)"
                               + ("" if ratio > ARM_MARGIN else " cheaper" +
                                  (", holds the budget" if verdict else f", misses the budget ({c['judged'].text})")))
        if verdict:
            if "kind" in c:
                paid.append(c)
            if got[label] < got[best["label"]]:
                best = c
    if len(paid) > 1:
        ex = set(exclude).union(*(c["exclude"] for c in paid))
        label = "kept float: " + ", ".join(c["kind"] for c in paid)
        cands[label] = {"label": label, "path": backend.make(ex), "exclude": ex, "judged": None}
        more = counted([label, best["label"]])
        if more and more[label] <= more[best["label"]] * ARM_MARGIN:
            cands[label]["judged"] = backend.judge(cands[label]["path"])
            ok = cands[label]["judged"].ok
            record["steps"].append(f"{label}: {more[label]} instructions vs {more[best['label']]}"
                                   + (" (cheaper, holds the budget)" if ok else " (misses the budget)"))
            if ok:
                best = cands[label]
        elif more:
            record["steps"].append(f"{label}: {more[label]} instructions, not cheaper than {best['label']}")
    record["chosen"] = best["label"]
    record["chosen_instructions"] = record["counts"][best["label"]]
    record["onnx2tf_full_integer_instructions"] = record["counts"].get("onnx2tf full integer",
                                                                       record["counts"].get(reference))
    if best is current:
        record["steps"].append(f"kept {current['label']}: nothing cheaper by the margin holds the budget")
        return found
    reasons = {n: f"speed: {record['counts'][best['label']]} vs {base} ARM instructions per inference on {core} "
                  f"with it float ({best['label']})" for n in best["exclude"] - exclude}
    out = {**found, "path": best["path"], "exclude": best["exclude"], "judged": best["judged"],
           "speed_reasons": reasons}
    if found["label"] == "onnx2tf full integer":  # the shipped model now comes from the variant quantizer
        out["producer"] = "TensorFlow's quantizer, cheaper on the ARM cost model than onnx2tf's"
    return out


def check_params(params, path, prefix):
    from ..errors import SpecError

    if params["precision"] not in PRECISIONS:
        raise SpecError(path, f"{prefix}.precision", f"must be one of {', '.join(PRECISIONS)}, "
                        f"got {params['precision']!r}")
    for key in ("force_float", "force_int8"):
        value = params[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecError(path, f"{prefix}.{key}", "must be a list of op names or op types")
    for key in ("force_float", "force_int8"):
        if params[key] and params["precision"] != "auto":
            raise SpecError(path, f"{prefix}.{key}", 'takes effect only with precision = "auto"')
    budget = params["plan_time_budget_s"]
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise SpecError(path, f"{prefix}.plan_time_budget_s", f"must be a positive number of seconds, got {budget!r}")
