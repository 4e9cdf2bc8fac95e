"""The arm64 precision plan (convert.precision = "auto"): full-integer int8 where it holds the accuracy budget,
int8 with float fallback for the ops that break it.

The full-integer model onnx2tf wrote is judged first, on LiteRT, against the same budget the validate stage will
apply. If it holds, it ships unchanged. If not, the shared search (plan_search.py) runs on TFLite variants made
from one calibration (tflite_variants.py): output cosine per op with only that op int8, then the most sensitive
ops kept float until the budget holds, then every op the budget did not need given back. The artifact keeps its
int8 input and output, but it is no longer full-integer: the meta says so and lists the float ops, which matters
to a user whose accelerator (an NPU, an Edge TPU) runs only integer ops.

Speed is not searched here: this host is not the target CPU, and LiteRT's x86 kernels (MobileNet int8 runs
2.4x slower than fp32 on them) would decide for the wrong one. The plan says so.
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
            if k in ("precision", "force_float", "force_int8", "plan_time_budget_s")}
PRECISIONS = ("full_integer", "auto")
# Ops that only move data: no arithmetic for int8 to get wrong, so they are not units of the search.
LAYOUT_OPS = {"PAD", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "GATHER", "SLICE",
              "STRIDED_SLICE", "SPLIT", "SPLIT_V", "PACK", "UNPACK", "QUANTIZE", "DEQUANTIZE", "SHAPE"}
SPEED_NOTE = ("not searched: this host is not an ARM CPU, and LiteRT's x86 kernels would decide for the wrong "
              "one; build on the device (or pin ops with convert.force_float) to keep slow int8 ops float")


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
        process.stop(self.proc)
        self.log.close()


def run(full_integer: Path, saved_model: Path, calib, per_channel, params, spec, evaluation, reference, budget,
        scratch: Path, target_name) -> tuple[Path, dict]:
    """(the model to ship, the plan's meta)."""
    from ..runtimes.litert import LiteRTSession
    from ..validation.target import outputs_on
    from . import plan_search

    t0 = time.monotonic()
    deadline = t0 + params["plan_time_budget_s"]
    names = [t.name for t in spec.inputs]
    shapes, onames = [r.shape[1:] for r in reference], [o.name for o in spec.outputs]

    class LiteRTBackend(plan_search.Backend):
        counter = 0

        def make(self, exclude=(), only=None):
            LiteRTBackend.counter += 1
            deny = ({tensor[n] for n in exclude} if only is None else
                    {o["tensor"] for o in server.ops} - {tensor[n] for n in only})
            return server.make(deny, scratch / f"variant{LiteRTBackend.counter}.tflite")

        def outputs(self, path, data):
            return outputs_on(LiteRTSession(path, 1, shapes, onames, names), data, names)

    backend = LiteRTBackend(spec, evaluation, reference, budget)
    before = backend.judge(full_integer)
    steps = [f"onnx2tf's full-integer model -> {before.text}"]
    plan = {"precision": params["precision"], "speed": SPEED_NOTE, "steps": steps,
            "before": plan_search.side("full integer (every op int8)", before)}
    if before.ok and not params["force_float"]:
        steps.append("the budget holds: shipped as full integer")
        plan.update(chosen="full integer", kept_float=[], full_integer=True, after=plan["before"],
                    search_seconds=round(time.monotonic() - t0, 1))
        return full_integer, plan

    server = VariantServer({"saved_model": str(saved_model), "calibration": calib, "per_channel": per_channel},
                           scratch, max(params["plan_time_budget_s"], 60), target_name)
    try:
        nodes = [(f"{o['op']}#{o['index']}", o["op"]) for o in server.ops if o["op"] not in LAYOUT_OPS]
        tensor = {f"{o['op']}#{o['index']}": o["tensor"] for o in server.ops}

        def fail(message):
            raise StageError("tflite", "convert." + message, target_name)

        forced_float = plan_search.resolve(params["force_float"], nodes, "force_float", fail)
        forced_int8 = plan_search.resolve(params["force_int8"], nodes, "force_int8", fail)
        found = plan_search.meet_budget(backend, "int8 with float fallback", nodes, forced_float, forced_int8,
                                        deadline, steps)
    finally:
        server.close()
    if not found["ok"]:
        raise StageError("tflite", f"precision plan: no int8 plan meets the budget ({plan_search.budget_text(budget)}): "
                         + "; ".join(steps[-3:]), target_name)
    kept = sorted(found["exclude"], key=lambda n: int(n.split("#")[1]))
    reasons = {n: "forced float by the spec" if n in forced_float else "accuracy: among the most sensitive ops"
               for n in kept}
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
    return found["path"], plan


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
