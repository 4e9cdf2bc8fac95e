"""Child processes for the tflite stage. `python -m toolchain.stages.tflite_worker JOB` runs onnx2tf on one job;
`... --check JOB` loads and runs what it wrote on LiteRT, in a process without TensorFlow (with TensorFlow loaded,
the interpreter would quietly pick up its Flex delegate, which a device's LiteRT does not have). Isolated so a
crash, a hang or TensorFlow's imports never reach the build process.

--check exits 3 (LITERT_FAILED) when LiteRT cannot load or run a model (a Flex op, a kernel that refuses its
data), with a LITERT_CHECK_FAILED line on stderr.
"""

import json
import sys
from pathlib import Path

LITERT_FAILED = 3


def main(job_path):
    job = json.load(open(job_path))
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
    job = json.load(open(job_path))
    out = Path(job["out"])
    for name in ("model_full_integer_quant.tflite", "model_float32.tflite"):
        if (out / name).is_file():
            problem = litert_check(out / name, job["calibration"])
            if problem:
                print(f"LITERT_CHECK_FAILED: {name}: {problem}", file=sys.stderr, flush=True)
                sys.exit(LITERT_FAILED)


def litert_check(path, calibration):
    """Load the model on LiteRT and run it on the first calibration sample; the error, or None."""
    import numpy as np

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None  # no LiteRT here: the validate stage says so
    samples = [np.load(p)[:1] for _, p, _, _ in calibration]
    try:
        interp = Interpreter(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
        for d in interp.get_input_details():
            shape = tuple(int(x) for x in d["shape"])
            match = [s for s in samples if s.shape == shape]
            a = match[0] if len(match) == 1 else np.zeros(shape, np.float32)
            if d["dtype"] in (np.int8, np.uint8):
                scale, zero = d["quantization"]
                info = np.iinfo(d["dtype"])
                a = np.clip(np.round(a / (scale or 1.0)) + zero, info.min, info.max)
            interp.set_tensor(d["index"], a.astype(d["dtype"]))
        interp.invoke()
    except Exception as e:  # noqa: BLE001 - any refusal of the runtime is the answer
        return " ".join(str(e).split())[:1000]
    return None


if __name__ == "__main__":
    if sys.argv[1] == "--check":
        check(sys.argv[2])
    else:
        main(sys.argv[1])
