"""`python -m toolchain.stages.litert_check --check FILE...` (project venv): the child that loads, allocates and
invokes each TFLite file the litert-torch route wrote, on the project's own LiteRT. A crash of the runtime on what a
newer converter wrote takes down this child, never the build (stages/litert_torch.py runs it)."""

import json
import sys
from pathlib import Path

CHECK_FAILED = 3


def _short(e, n=400):
    return " ".join(str(e).split())[:n]


def check(paths):
    """`python -m toolchain.stages.litert_check --check FILE...` (project venv): load, allocate and invoke each
    file once on deterministic inputs of its own dtypes; prints LITERT_IO:<json> of the last file, or one
    LITERT_CHECK_FAILED line and exits 3."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    io = None
    for path in paths:
        try:
            names = {}
            signed = Interpreter(model_path=str(path), num_threads=1)  # its own instance: the signature runner
            if len(signed.get_signature_list()) == 1:                   # holds views of the tensors it allocates
                runner = signed.get_signature_runner()
                names = {d["index"]: n for n, d in runner.get_input_details().items()}
                names.update({d["index"]: n for n, d in runner.get_output_details().items()})
            del signed
            interp = Interpreter(model_path=str(path), num_threads=1)
            interp.allocate_tensors()
            for d in interp.get_input_details():
                shape = tuple(int(x) for x in d["shape"])
                if np.issubdtype(d["dtype"], np.floating):
                    a = np.random.default_rng(0).standard_normal(shape)
                else:
                    a = np.ones(shape)
                interp.set_tensor(d["index"], a.astype(d["dtype"]))
            interp.invoke()
            outs = interp.get_output_details()
            for d in outs:
                y = interp.get_tensor(d["index"])
                if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
                    raise ValueError(f"output {d['name']} is not finite on the example input")

            def describe(d):
                return {"name": names.get(d["index"], d["name"]), "tflite_name": d["name"],
                        "shape": [int(x) for x in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
            io = {"inputs": [describe(d) for d in interp.get_input_details()],
                  "outputs": [describe(d) for d in outs]}
        except Exception as e:  # noqa: BLE001 - any refusal of the runtime is the answer
            print(f"LITERT_CHECK_FAILED: {Path(path).name}: {_short(e, 1000)}", file=sys.stderr, flush=True)
            sys.exit(CHECK_FAILED)
    print("LITERT_IO:" + json.dumps(io), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--check":
        check(sys.argv[2:])
    else:
        sys.exit("usage: python -m toolchain.stages.litert_check --check FILE...")

