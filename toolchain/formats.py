"""The format registry: one table of what each artifact format is (in the spirit of Ultralytics'
`export_formats`). Publish (api), report, package, verify and the pipeline read it; none of them knows a format
by name.

A format row says: the suffix of the artifact's main file, the suffixes of the files that travel with it (an
OpenVINO IR is .xml + .bin with the same stem), which stages may make it per precision (the first whose
`applies` accepts the target's table wins; an empty tuple ships the traced fp32 ONNX as is), how to read the
signature an app needs, and whether its fp32 baseline is the traced ONNX or a file of its own format written by
the stage. Nothing here imports a heavy framework.
"""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # the main file, e.g. ".onnx"
    stages: dict  # precision -> candidate stage modules (toolchain/stages/NAME.py), in order
    runtimes: tuple  # the runtimes (runtimes.RUNTIMES) that can judge it
    companions: tuple = ()  # suffixes of the other files that make the artifact (same stem as the main file)
    signature: str = "report_io"  # a reader in SIGNATURES
    own_baseline: bool = False  # the stage writes an fp32 baseline of this format (else: the traced fp32 ONNX)
    description: str = field(default="", compare=False)

    def files(self, main) -> list:
        """Every file of the artifact whose main file is `main`, the main file first."""
        main = Path(main)
        return [main, *(main.with_suffix(s) for s in self.companions)]


FORMATS = {f.name: f for f in (
    Format("onnx", ".onnx", {"fp32": (), "int8": ("plan", "quantize"), "fp16": ("fp16",)}, ("onnxruntime",),
           signature="onnx", description="ONNX graph (one self-contained file)"),
    Format("tflite", ".tflite", {"int8": ("litert_torch", "tflite")}, ("litert",), own_baseline=True,
           description="TFLite flatbuffer (LiteRT)"),
    Format("openvino", ".xml", {"int8": ("openvino_int8",)}, ("openvino",), companions=(".bin",),
           signature="openvino", own_baseline=True, description="OpenVINO IR: topology (.xml) + weights (.bin)"),
)}


def get(name: str) -> Format:
    return FORMATS[name]


def _onnx_signature(path, entry):
    from .bundle import onnx_signature

    return onnx_signature(path)


def _openvino_signature(path, entry):
    import openvino as ov

    model = ov.Core().read_model(str(path))

    def describe(port):
        return {"name": port.get_any_name(), "shape": [d.get_length() if d.is_static else -1
                                                       for d in port.get_partial_shape()],
                "dtype": port.get_element_type().to_dtype().name}
    return {"inputs": [describe(p) for p in model.inputs], "outputs": [describe(p) for p in model.outputs]}


# How a release manifest describes an artifact's inputs and outputs: read from the file, or what validation
# recorded in the report (`io`: names, shapes, dtypes, quantization parameters).
SIGNATURES = {"onnx": _onnx_signature, "openvino": _openvino_signature,
              "report_io": lambda path, entry: entry.get("io", {})}


def signature(fmt: str, path, entry) -> dict:
    return SIGNATURES[FORMATS[fmt].signature](path, entry)


def precisions() -> dict:
    """format -> the precisions some stage makes (what a target file may ask for)."""
    return {f.name: tuple(f.stages) for f in FORMATS.values()}
