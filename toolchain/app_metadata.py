"""What an app needs to feed an artifact and read its answer, carried inside the artifact itself: model name and
version, each input's name, shape, dtype, layout (and the transpose where the converter changed it), the
normalisation the spec declares, each output's labels (class names), and the quantization parameters of the
inputs and outputs.

ONNX: `metadata_props` (ONNX Runtime: `session.get_modelmeta().custom_metadata_map`): `model_name` and
`model_version` as plain strings, `inputs` and `outputs` as JSON. TFLite: one entry of the model's `metadata`
named `toolchain` whose buffer holds the same document as JSON, written with the TFLite schema's object API that
ships with LiteRT (the way TFLite's own metadata populator does it). Both are deterministic (sorted keys, fixed
separators) and change no tensor or op. They are written by the metadata stage (stages/metadata.py) into a copy of
the converted artifact, so a new version or new labels restamp the file without converting again, and the runtime
that judges the artifact judges the file as shipped. `read(path)` gives the document back for either format
(`toolchain metadata FILE`).
"""

import json
from pathlib import Path

TFLITE_NAME = "toolchain"  # the TFLite metadata entry
_AXES = {3: "N,C,T", 4: "N,C,H,W"}
UNCHANGED = "as the PyTorch model"


def declared(spec) -> dict:
    """The spec's part: names, versions, normalisation, labels. A value input of the metadata stage (its key)."""
    inputs = []
    for t in spec.inputs:
        d = {"name": t.name, "model_shape": list(t.shape), "model_dtype": t.dtype}
        if len(t.shape) in _AXES:
            d["model_layout"] = f"({_AXES[len(t.shape)]})"
        if t.normalization:
            d["normalization"] = {**t.normalization, "formula": "x = (raw - mean) / std"
                                  + (", per channel (axis 1)" if len(t.normalization["mean"]) > 1
                                     or len(t.normalization["std"]) > 1 else "")}
        inputs.append(d)
    outputs = [{"name": o.name, **({"labels": list(o.class_names)} if o.class_names else {})} for o in spec.outputs]
    return {"model_name": spec.name, "model_version": spec.version, "inputs": inputs, "outputs": outputs}


def _dumps(doc) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _check_labels(spec, outputs):
    """Class names must match the output's last dimension where the artifact knows it: a user error otherwise."""
    from .errors import SpecError

    for i, (o, d) in enumerate(zip(spec.outputs, outputs)):
        shape = d.get("shape") or []
        width = shape[-1] if shape else None
        if o.class_names and isinstance(width, int) and width > 0 and width != len(o.class_names):
            raise SpecError(spec.path, f"outputs[{i}].class_names",
                            f"has {len(o.class_names)} names, but output {o.name!r} has {width} values per sample "
                            f"(shape {shape})")


# ---- ONNX ------------------------------------------------------------------------------------------------------
def _onnx_quant(model, name, consumer: bool):
    """Scale and zero point of the QuantizeLinear reading a float input (consumer) or the DequantizeLinear
    writing an output: the graph does this conversion itself; an app that feeds int8 data elsewhere needs them."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        hit = (n.op_type == "QuantizeLinear" and n.input[0] == name) if consumer else \
            (n.op_type == "DequantizeLinear" and name in n.output)
        if not hit or len(n.input) < 2 or n.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[n.input[1]]).astype(float).ravel()
        zp = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] in inits else None
        if scale.size != 1:
            continue
        return {"scale": float(scale[0]), "zero_point": int(zp.ravel()[0]) if zp is not None else 0,
                "dtype": zp.dtype.name if zp is not None else "uint8",
                "where": "inside the graph: the model takes and returns float; it " +
                         ("quantizes this input" if consumer else "dequantizes this output") + " with these"}
    return None


def _onnx_tensor(vi) -> dict:
    from onnx import helper

    tt = vi.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in tt.shape.dim]
    return {"name": vi.name, "shape": shape, "dtype": helper.tensor_dtype_to_np_dtype(tt.elem_type).name}


def stamp_onnx(path, declared_doc: dict, spec) -> dict:
    """Write the metadata into the ONNX file at `path` (in place); returns the document."""
    import onnx

    model = onnx.load(str(path))
    doc = _merge_onnx(model, declared_doc)
    _check_labels(spec, doc["outputs"])
    for k in [p.key for p in model.metadata_props if p.key in doc]:  # ours replace; any others stay
        del model.metadata_props[[p.key for p in model.metadata_props].index(k)]
    for k in sorted(doc):
        model.metadata_props.add(key=k, value=doc[k] if isinstance(doc[k], str) else _dumps(doc[k]))
    onnx.save(model, str(path))
    return doc


def _merge_onnx(model, declared_doc) -> dict:
    graph_inputs = {vi.name: vi for vi in model.graph.input}
    inputs = []
    for d in declared_doc["inputs"]:
        vi = graph_inputs.get(d["name"])
        row = {**d, **(_onnx_tensor(vi) if vi is not None else {})}
        row["layout"] = UNCHANGED + (f" {d['model_layout']}" if d.get("model_layout") else "")
        q = _onnx_quant(model, d["name"], consumer=True)
        if q:
            row["quantization"] = q
        inputs.append(row)
    outputs = []
    for d, vi in zip(declared_doc["outputs"], model.graph.output):
        row = {**d, **_onnx_tensor(vi), "name": d["name"]}
        q = _onnx_quant(model, vi.name, consumer=False)
        if q:
            row["quantization"] = q
        outputs.append(row)
    return {**declared_doc, "inputs": inputs, "outputs": outputs}


def read_onnx(path) -> dict:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    doc = {}
    for k, v in props.items():
        try:
            doc[k] = json.loads(v) if k in ("inputs", "outputs") else v
        except ValueError:
            doc[k] = v
    return doc


# ---- TFLite ----------------------------------------------------------------------------------------------------
def _schema():
    from ai_edge_litert import schema_py_generated as schema  # the TFLite flatbuffer schema LiteRT ships

    return schema


def _np_dtype(schema, code) -> str:
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return {"FLOAT32": "float32", "FLOAT16": "float16", "INT8": "int8", "UINT8": "uint8", "INT32": "int32",
            "INT64": "int64", "BOOL": "bool", "INT16": "int16"}.get(names.get(code, ""), names.get(code, "?").lower())


def _tflite_tensor(schema, t, name) -> dict:
    row = {"name": name, "tflite_name": (t.name or b"").decode(), "shape": [int(x) for x in t.shape],
           "dtype": _np_dtype(schema, t.type)}
    q = t.quantization
    if q is not None and q.scale is not None and len(q.scale) == 1:
        row["quantization"] = {"scale": float(q.scale[0]), "zero_point": int(q.zeroPoint[0]),
                               "dtype": row["dtype"], "formula": "real = scale * (q - zero_point)"}
    return row


def _layout(model_shape, tensor_shape, output=False) -> str:
    from .runtimes.litert import layout_note

    note = layout_note((1, *model_shape[1:]), tensor_shape, output=output) if model_shape else None
    if note:
        return note
    return UNCHANGED + (f" ({_AXES[len(model_shape)]})" if model_shape and len(model_shape) in _AXES else "")


def stamp_tflite(path, declared_doc: dict, spec, output_shapes=None, split=False) -> dict:
    """Write the metadata into the TFLite file at `path` (in place); returns the document. output_shapes: the
    model's output shapes (batch first), to say where the converter transposed an output. split: the artifact
    ends before the spec's outputs (the app's post-processing makes them): its outputs keep their own names."""
    import flatbuffers

    schema = _schema()
    path = Path(path)
    raw = path.read_bytes()
    model = schema.ModelT.InitFromPackedBuf(raw, 0)
    _inline_external_buffers(model, raw, path)
    doc = _merge_tflite(schema, model, declared_doc, output_shapes, split)
    _check_labels(spec, [] if split or len(doc["outputs"]) != len(spec.outputs) else doc["outputs"])
    payload = _dumps(doc).encode()
    model.metadata = [m for m in (model.metadata or []) if m.name != TFLITE_NAME.encode()]
    buffer = schema.BufferT()
    buffer.data = list(payload)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = TFLITE_NAME, len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    from .cache import atomic_write

    atomic_write(path, bytes(builder.Output()))
    return doc


def _inline_external_buffers(model, raw: bytes, path):
    """Buffers stored past the flatbuffer (offset/size from the file's start: litert-torch writes its weights so
    even for small models) would be lost by a re-pack: move their bytes into the flatbuffer, as the converters do
    for a model under 2 GB. The tensors' bytes are unchanged; only where the file keeps them moves."""
    import numpy as np

    from .errors import StageError

    external = [b for b in model.buffers or [] if (b.offset or 0) > 1]
    if sum(int(b.size or 0) for b in external) + len(raw) >= 2 ** 31 - 2 ** 24:
        raise StageError("metadata", f"{path.name} keeps over 2 GB of weights outside the flatbuffer; writing "
                                     "metadata into it is not supported")
    for b in external:
        off, size = int(b.offset), int(b.size)
        if off + size > len(raw):
            raise StageError("metadata", f"{path.name}: a buffer points past the end of the file (offset {off}, "
                                         f"size {size}, file {len(raw)} bytes)")
        b.data, b.offset, b.size = np.frombuffer(raw, dtype=np.uint8, count=size, offset=off).copy(), 0, 0


def _signature_names(model, kind):
    """tensor index -> the signature's name for it (the converter keeps the ONNX input names there)."""
    out = {}
    for sd in model.signatureDefs or []:
        for m in getattr(sd, kind) or []:
            out[m.tensorIndex] = (m.name or b"").decode()
    return out


def _merge_tflite(schema, model, declared_doc, output_shapes, split=False) -> dict:
    sg = model.subgraphs[0]
    in_names, out_names = _signature_names(model, "inputs"), _signature_names(model, "outputs")
    declared_in = {d["name"]: d for d in declared_doc["inputs"]}
    tensors = [(in_names.get(i, (sg.tensors[i].name or b"").decode()), sg.tensors[i]) for i in sg.inputs]
    if not all(n in declared_in for n, _ in tensors) and len(tensors) == len(declared_doc["inputs"]):
        tensors = [(d["name"], t) for d, (_, t) in zip(declared_doc["inputs"], tensors)]  # by position
    inputs = []
    for name, t in sorted(tensors, key=lambda nt: list(declared_in).index(nt[0]) if nt[0] in declared_in else 0):
        d = declared_in.get(name, {"name": name})
        row = {**d, **_tflite_tensor(schema, t, name)}
        row["layout"] = _layout(d.get("model_shape"), row["shape"])
        inputs.append(row)
    # Outputs in the signature's (sorted-name) order, as LiteRT lists them; named as the spec's where they match.
    outs = sorted(((out_names.get(i, ""), sg.tensors[i]) for i in sg.outputs), key=lambda nt: nt[0])
    spec_outs = declared_doc["outputs"]
    outputs = []
    for k, (sig, t) in enumerate(outs):
        same = not split and len(outs) == len(spec_outs) and (output_shapes is None or len(output_shapes) == len(outs))
        d = spec_outs[k] if same else {"name": sig or (t.name or b"").decode()}
        row = {**d, **_tflite_tensor(schema, t, d["name"]), "signature_name": sig}
        if same and output_shapes is not None:
            row["layout"] = _layout(list(output_shapes[k]), row["shape"], output=True)
        outputs.append(row)
    return {**declared_doc, "inputs": inputs, "outputs": outputs}


def read_tflite(path) -> dict:
    schema = _schema()
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    for i in range(model.MetadataLength()):
        m = model.Metadata(i)
        if m.Name() == TFLITE_NAME.encode():
            return json.loads(model.Buffers(m.Buffer()).DataAsNumpy().tobytes())
    return {}


def read(path) -> dict:
    """The metadata document of an artifact (ONNX or TFLite); {} where it carries none."""
    suffix = Path(path).suffix
    if suffix == ".onnx":
        return read_onnx(path)
    if suffix == ".tflite":
        return read_tflite(path)
    raise ValueError(f"{path}: not an ONNX or TFLite file")
