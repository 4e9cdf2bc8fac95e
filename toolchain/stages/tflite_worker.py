"""Child process for the tflite stage: runs onnx2tf on one job. Isolated so a crash, a hang or TensorFlow's
imports never reach the build process."""

import json
import sys


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


if __name__ == "__main__":
    main(sys.argv[1])
