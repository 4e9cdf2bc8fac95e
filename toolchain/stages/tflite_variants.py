"""Child process for the arm64 precision plan: `python -m toolchain.stages.tflite_variants JOB`.

It calibrates the SavedModel onnx2tf wrote once (TensorFlow's MLIR quantizer, calibrate-only), then answers
requests for variants: full-integer int8 with int8 I/O, except for the ops named in the request's denylist, which
stay float with QUANTIZE/DEQUANTIZE around them. Making a variant from the calibrated model is a quantization
pass, not a conversion (about 0.05 s on a small CNN), so a plan search can afford one per node.

Protocol, JSON lines: the child first writes {"ops": [{"index", "op", "tensor"}...]} (the calibrated model's ops;
"tensor" is the name its denylist takes), then for each request line {"denylist": [...], "path": P} on stdin it
writes P and answers {"ok": true} or {"error": "..."}. TensorFlow's own prints go to stderr: stdout is kept for
the replies. In its own process for the same reasons as tflite_worker (TensorFlow's imports, crashes).
"""

import json
import os
import sys


def _signature_inputs(saved_model):
    import tensorflow as tf

    sig = tf.saved_model.load(saved_model).signatures["serving_default"]
    return list(sig.structured_input_signature[1].keys())


def _dataset(job, keys):
    """Calibration samples keyed by the SavedModel's input names: by name where onnx2tf kept them, else in order."""
    import numpy as np

    arrays = [(name, np.load(path), float(mean), float(std)) for name, path, mean, std in job["calibration"]]
    by_name = all(name in keys for name, *_ in arrays)
    named = {(name if by_name else keys[i]): (a - mean) / std for i, (name, a, mean, std) in enumerate(arrays)}
    count = min(len(a) for a in named.values())

    def gen():
        for i in range(count):
            yield {k: v[i:i + 1].astype(np.float32) for k, v in named.items()}
    return gen


def main(job_path):
    job = json.load(open(job_path))
    if "parent_pid" in job:
        from .tflite_worker import _die_with_parent

        _die_with_parent(job["parent_pid"])
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever TensorFlow prints must not corrupt the replies
    import tensorflow as tf
    from tensorflow.lite.python import convert

    converter = tf.lite.TFLiteConverter.from_saved_model(job["saved_model"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _dataset(job, _signature_inputs(job["saved_model"]))
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # noqa: SLF001 - the documented route of TF's quantization debugger
    converter._experimental_disable_per_channel = not job["per_channel"]  # noqa: SLF001
    calibrated = converter.convert()

    interp = tf.lite.Interpreter(model_content=calibrated)
    tensors = interp.get_tensor_details()
    ops = [{"index": o["index"], "op": o["op_name"], "tensor": tensors[o["outputs"][0]]["name"]}
           for o in interp._get_ops_details() if o["outputs"]]  # noqa: SLF001 - no public op listing
    del interp
    reply.write(json.dumps({"ops": ops}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        try:
            model = convert.mlir_quantize(calibrated, disable_per_channel=not job["per_channel"], fully_quantize=True,
                                          input_data_type=tf.int8, output_data_type=tf.int8,
                                          denylisted_nodes=req["denylist"] or None)
            with open(req["path"], "wb") as f:
                f.write(model)
            reply.write(json.dumps({"ok": True}) + "\n")
        except Exception as e:  # noqa: BLE001 - the parent decides what a refused variant means
            reply.write(json.dumps({"error": " ".join(str(e).split())[:500]}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
