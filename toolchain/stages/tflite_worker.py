"""Child processes for the tflite stage. `python -m toolchain.stages.tflite_worker JOB` runs onnx2tf on one job;
`... --check JOB` loads and runs what it wrote on LiteRT, in a process without TensorFlow (with TensorFlow loaded,
the interpreter would quietly pick up its Flex delegate, which a device's LiteRT does not have). Isolated so a
crash, a hang or TensorFlow's imports never reach the build process.

--check exits 3 (LITERT_FAILED) when LiteRT cannot load or run a model (a Flex op, a kernel that refuses its
data), with a LITERT_CHECK_FAILED line on stderr, and 4 (FP32_MISMATCH) when the float32 model does not compute
what the ONNX graph computes, with a FP32_MISMATCH line.
"""

import json
import os
import sys
from pathlib import Path

LITERT_FAILED = 3
FP32_MISMATCH = 4


def _die_with_parent(parent_pid):
    """If the build is killed (even SIGKILL), the converter must not run on unsupervised (Linux)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def main(job_path):
    job = json.load(open(job_path))
    if "parent_pid" in job:
        _die_with_parent(job["parent_pid"])
    import onnx2tf

    onnx2tf.convert(
        input_onnx_file_path=job["onnx"],
        output_folder_path=job["out"],
        output_integer_quantized_tflite=True,
        quant_type="per-channel" if job["per_channel"] else "per-tensor",
        custom_input_op_name_np_data_path=job["calibration"],
        overwrite_input_shape=job["shapes"],
        input_quant_dtype="int8",
        output_quant_dtype="int8",
        copy_onnx_input_output_names_to_tflite=True,
        non_verbose=False,
        verbosity="error",
        **job.get("extra", {}),
    )


def check(job_path):
    """Both models load and run on LiteRT (else exit LITERT_FAILED); the float32 one agrees with the ONNX graph
    on the job's check samples (else exit FP32_MISMATCH): onnx2tf infers layouts from shapes and can silently
    build a different function, which no amount of calibration fixes."""
    import numpy as np

    job = json.load(open(job_path))
    if "parent_pid" in job:
        _die_with_parent(job["parent_pid"])
    out = Path(job["out"])
    spec = job.get("check")
    try:
        from toolchain.runtimes.litert import LiteRTSession
        import ai_edge_litert  # noqa: F401
    except ImportError:
        return  # no LiteRT here: the validate stage says so
    if spec is None:  # no reference outputs: load and run each model on zeros
        for name in ("model_full_integer_quant.tflite", "model_float32.tflite"):
            problem = _run_on_zeros(out / name)
            if problem:
                print(f"LITERT_CHECK_FAILED: {name}: {problem}", file=sys.stderr, flush=True)
                sys.exit(LITERT_FAILED)
        return
    with np.load(spec["data"]) as z:
        data = {k: z[k] for k in z.files}
    inputs = {n: data[f"in{i}"] for i, n in enumerate(spec["inputs"])}
    refs = [data[f"out{i}"] for i in range(len(spec["outputs"]))]
    n = len(refs[0])
    for name, compare in (("model_full_integer_quant.tflite", False), ("model_float32.tflite", True)):
        try:
            session = LiteRTSession(out / name, 1, [r.shape[1:] for r in refs], spec["outputs"], spec["inputs"])
            runs = [session.run({k: v[i:i + 1] for k, v in inputs.items()}) for i in range(n)]
        except Exception as e:  # noqa: BLE001 - any refusal of the runtime is the answer
            print(f"LITERT_CHECK_FAILED: {name}: {' '.join(str(e).split())[:1000]}", file=sys.stderr, flush=True)
            sys.exit(LITERT_FAILED)
        if not compare:
            continue
        got = [np.concatenate(parts).astype(np.float64) for parts in zip(*runs)]
        for k, (a, r) in enumerate(zip(got, refs)):
            a, r = a.reshape(n, -1), r.reshape(n, -1).astype(np.float64)
            if a.shape != r.shape:
                print(f"FP32_MISMATCH: output {k} has {a.shape[1]} values per sample, the ONNX graph {r.shape[1]}",
                      file=sys.stderr, flush=True)
                sys.exit(FP32_MISMATCH)
            cos = float(((a * r).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1),
                                                     1e-12)).min())
            err = float(np.abs(a - r).max())
            if not (cos >= 0.999 and err <= 1e-2 * max(float(np.abs(r).max()), 1e-3)):
                print(f"FP32_MISMATCH: output {k}: cosine {cos:.4f}, max abs error {err:.3g} on {n} calibration "
                      "samples", file=sys.stderr, flush=True)
                sys.exit(FP32_MISMATCH)


def _run_on_zeros(path):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
        for d in interp.get_input_details():
            interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        interp.invoke()
    except Exception as e:  # noqa: BLE001 - any refusal of the runtime is the answer
        return " ".join(str(e).split())[:1000]
    return None


if __name__ == "__main__":
    if sys.argv[1] == "--check":
        check(sys.argv[2])
    else:
        main(sys.argv[1])
