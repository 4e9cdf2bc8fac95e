"""tflite: fp32 ONNX -> full-integer int8 TFLite (int8 input and output) with onnx2tf, plus the fp32 TFLite
baseline from the same conversion.

onnx2tf imports TensorFlow, rewrites its input file in place, can crash the process (SIGSEGV on some RNNs)
and, offline, tries to download sample data for 3-channel image models. So it runs in a child process
(tflite_worker) with a time limit, on a private copy of the ONNX file, in a scratch directory that holds a
stand-in for the sample-data file it would otherwise download.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import StageError

NAME = "tflite"
VERSION = 1
LIBRARIES = ("onnx2tf", "tensorflow", "onnx", "onnxsim", "numpy")
OUTPUT = "model.int8.tflite"
BASELINE = "model.fp32.tflite"
DEFAULTS = {"converter": "onnx2tf", "timeout_s": 900, "per_channel": True, "extra_flags": {}}
# onnx2tf looks for this file in its working directory before downloading it (STACK.md, offline trap).
SAMPLE_DATA = "calibration_image_sample_data_20x128x128x3_float32.npy"


def params_for(table: dict, path, prefix="convert") -> dict:
    from ..errors import SpecError

    unknown = set(table) - set(DEFAULTS)
    if unknown:
        raise SpecError(path, prefix, f"unknown option(s): {', '.join(sorted(unknown))}")
    params = {**DEFAULTS, **table}
    if params["converter"] != "onnx2tf":
        raise SpecError(path, f"{prefix}.converter", f"unknown converter {params['converter']!r} (known: onnx2tf)")
    return params


def nhwc(a):
    """Model layout -> TFLite layout: channels move last for rank 3 and 4 (onnx2tf's convention)."""
    if a.ndim == 4:
        return a.transpose(0, 2, 3, 1)
    if a.ndim == 3:
        return a.transpose(0, 2, 1)
    return a


def run(fp32_path, params: dict, out_dir, calibration: dict, spec, target_name) -> dict:
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="toolchain-onnx2tf-") as scratch:
        scratch = Path(scratch)
        onnx_copy = scratch / "model.onnx"  # onnx2tf rewrites its input: never hand it a cached artifact
        shutil.copyfile(fp32_path, onnx_copy)
        np.save(scratch / SAMPLE_DATA, np.zeros((20, 128, 128, 3), np.float32))
        calib = []
        shapes = []
        for t in spec.inputs:
            arr = calibration[t.name]
            path = scratch / f"calib_{len(calib)}.npy"
            np.save(path, nhwc(arr).astype(np.float32))
            calib.append([t.name, str(path), 0.0, 1.0])  # data is already normalised: mean 0, std 1
            shapes.append(f"{t.name}:" + ",".join(str(d) for d in (1, *t.shape[1:])))
        job = {"onnx": str(onnx_copy), "out": str(scratch / "out"), "calibration": calib, "shapes": shapes,
               "per_channel": params["per_channel"], "extra": params["extra_flags"]}
        log = _run_worker(job, scratch, params["timeout_s"], target_name)
        produced = {"int8": scratch / "out" / "model_full_integer_quant.tflite",
                    "fp32": scratch / "out" / "model_float32.tflite"}
        if not produced["int8"].is_file() or not produced["fp32"].is_file():
            raise StageError(NAME, "onnx2tf finished without writing the full-integer model: "
                             + _cause(log), target_name)
        shutil.copyfile(produced["int8"], out_dir / OUTPUT)
        shutil.copyfile(produced["fp32"], out_dir / BASELINE)
    return {"converter": "onnx2tf", "route": "onnx -> onnx2tf -> tflite (full integer int8 I/O)",
            "calibration_samples": int(len(calibration[spec.inputs[0].name])), "input_shapes": shapes,
            "full_integer": True}


def _run_worker(job, scratch, timeout_s, target_name) -> str:
    env = dict(os.environ)
    # onnx2tf runs onnxsim as a command: without the venv's bin on PATH it silently skips simplification.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    job_path = scratch / "job.json"
    job_path.write_text(json.dumps(job))
    try:
        proc = subprocess.run([sys.executable, "-m", "toolchain.stages.tflite_worker", str(job_path)], cwd=scratch,
                              env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise StageError(NAME, f"onnx2tf did not finish within {timeout_s} s (convert.timeout_s); killed",
                         target_name) from None
    log = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        raise StageError(NAME, f"the onnx2tf converter process died with {sig}; {_cause(log)}", target_name)
    if proc.returncode != 0:
        raise StageError(NAME, f"onnx2tf failed: {_cause(log)}", target_name)
    return log


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
