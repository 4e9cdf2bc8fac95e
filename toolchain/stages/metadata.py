"""metadata: write what an app needs (app_metadata.py: model name and version, labels, normalisation, input layout,
quantization parameters) into a copy of a target's converted artifact. This is the artifact that is validated,
reported, packaged and shipped.

Why a node of its own: the conversions (quantize, the precision plans, fp16, onnx2tf, litert-torch) take seconds to
minutes and depend on the graph and their options only. Keyed on the metadata too, a release that bumps
`model.version`, renames the model or edits its labels would rerun every conversion and plan, and two models with
the same graph would not share them. Here the conversion's unstamped output (its digest) and the metadata document
key a cheap copy-and-stamp; the conversion stays cached.

What the stamp needs from the conversion besides its file (the graph's output shapes, to say where onnx2tf
transposed an output; whether the artifact is a split one whose outputs keep their own names) comes from the
conversion's meta (its output record, `facts`), never recomputed. Stamping changes no tensor or op, and is
deterministic: the same inputs give the same bytes.
"""

import shutil
from pathlib import Path

NAME = "metadata"
VERSION = 2  # 2: weights a converter kept past the flatbuffer (litert-torch) are moved into it, not refused
LIBRARIES = ("onnx",)  # per target: libraries(target) below
SUFFIXES = (".onnx", ".tflite")  # the formats that carry app metadata (an OpenVINO IR carries none yet)


def stamps(transform) -> bool:
    """Whether the artifact of this conversion stage gets the app metadata (a node of this stage follows it)."""
    return transform is not None and Path(transform.OUTPUT).suffix in SUFFIXES


def facts(conversion_meta: dict) -> dict:
    """What the stamp reads from the conversion's output record: the ONNX graph's output shapes (batch first; None
    where unknown) and whether the artifact is split (it ends before the spec's outputs)."""
    return {"output_shapes": conversion_meta.get("onnx_output_shapes"), "split": "split" in conversion_meta}


# ---- declaration (stages/__init__.py): one node per target whose conversion stamps, after it -------------------
def spec_params(spec) -> dict:
    return {}


def target_params(target, spec) -> dict:
    return {"file": target.transform.OUTPUT}  # the artifact's main file, under the conversion's own name


def libraries(target) -> tuple:
    if Path(target.transform.OUTPUT).suffix == ".tflite":  # the TFLite schema LiteRT ships, packed by flatbuffers
        return ("ai-edge-litert", "flatbuffers")
    return LIBRARIES


def needs(params) -> tuple:
    # converted: the conversion's unstamped file (a digest); conversion: facts() of its meta; app_metadata: the
    # spec's document (a value: names, version, labels, normalisation)
    return ("converted", "conversion", "app_metadata")


def build(inp, params, out_dir) -> dict:
    from ..app_metadata import stamp_onnx, stamp_tflite

    dest = Path(out_dir) / params["file"]
    shutil.copyfile(inp.converted, dest)  # a cached entry is never written in place
    if dest.suffix == ".onnx":
        doc = stamp_onnx(dest, inp.app_metadata, inp.spec)
    else:
        f = inp.conversion
        doc = stamp_tflite(dest, inp.app_metadata, inp.spec, f["output_shapes"], split=f["split"])
    return {"file": params["file"], "size_bytes": dest.stat().st_size, "model_name": doc["model_name"],
            "model_version": doc["model_version"]}
