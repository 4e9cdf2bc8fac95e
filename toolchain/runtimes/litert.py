"""LiteRT (the TFLite interpreter, `ai-edge-litert`). Takes data in the model's own layout (NCHW for the
sample CNNs): moves channels last, quantizes int8 inputs with the tensor's scale/zero point, dequantizes
outputs and puts them back in the model's layout, so the same metric code serves every target."""

import numpy as np

from .base import RuntimeUnavailable


def _to_tflite(a, shape):
    """Model layout -> the interpreter's layout, decided from the real tensor shape (batch 1)."""
    if tuple(a.shape) == tuple(shape):
        return a
    for perm in ((0, 2, 3, 1), (0, 2, 1)):
        if a.ndim == len(perm) and tuple(a.transpose(perm).shape) == tuple(shape):
            return a.transpose(perm)
    raise ValueError(f"cannot map an input of shape {a.shape} onto the TFLite tensor {list(shape)}")


_AXES = {3: "NCT", 4: "NCHW"}


def layout_note(model_shape, tensor_shape, output=False) -> str | None:
    """How an app must feed (or, output=True, read) a tensor whose layout the converter changed, e.g. (N,C,T) ->
    (N,T,C)."""
    model_shape, tensor_shape = tuple(model_shape), tuple(tensor_shape)
    if model_shape == tensor_shape or len(model_shape) not in _AXES:
        return None
    for perm in ((0, 2, 3, 1), (0, 2, 1)):
        if len(perm) == len(model_shape) and tuple(model_shape[i] for i in perm) == tensor_shape:
            names = _AXES[len(perm)]
            back = tuple(perm.index(i) for i in range(len(perm)))  # the inverse: the model's layout again
            use = f"read y.transpose{back} for the model's layout" if output else f"feed x.transpose{perm}"
            return f"transposed from ({','.join(names)}) to ({','.join(names[i] for i in perm)}): {use}"
    return None


def _from_tflite(a, want):
    if want is None or tuple(a.shape[1:]) == tuple(want):
        return a
    for perm in ((0, 3, 1, 2), (0, 2, 1)):
        if a.ndim == len(perm) and tuple(a.transpose(perm).shape[1:]) == tuple(want):
            return a.transpose(perm)
    return a


# Op resolvers a target can name: the default (XNNPACK delegate applied) and the builtin kernels without it.
RESOLVERS = {"default": "AUTO", "builtin_without_default_delegates": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
             "builtin_ref": "BUILTIN_REF"}


def _quant(d):
    scale, zero = d["quantization"]
    return float(scale), int(zero)


class LiteRTSession:
    batchable = False  # onnx2tf fixes the batch at 1
    timing_method = "interpreter.invoke (tensors set once)"

    def __init__(self, path, threads=1, output_shapes=None, output_names=None, input_names=None, resolver=None):
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError as e:
            raise RuntimeUnavailable(f"ai-edge-litert is not installed ({e})") from None
        kw = {}
        if resolver not in (None, "default"):  # RESOLVERS: e.g. no XNNPACK, as on a device built without it
            kw["experimental_op_resolver_type"] = getattr(OpResolverType, RESOLVERS[resolver])
        from ..native_stderr import without_native_info

        with without_native_info():  # "INFO: Created TensorFlow Lite XNNPACK delegate" would leak past -q
            self.interp = Interpreter(model_path=str(path), num_threads=threads, **kw)
            self.interp.allocate_tensors()
        self.inputs = self._ordered(self.interp.get_input_details(), "inputs")
        self.outputs = self._ordered(self.interp.get_output_details(), "outputs")
        self.output_shapes = output_shapes
        if input_names and all(any(d["onnx_name"] == n for d in self.inputs) for n in input_names):
            self.inputs = [next(d for d in self.inputs if d["onnx_name"] == n) for n in input_names]
        if output_names and all(any(d["onnx_name"] == n for d in self.outputs) for n in output_names):
            self.outputs = [next(d for d in self.outputs if d["onnx_name"] == n) for n in output_names]
        self.providers = ["LiteRT interpreter (CPU kernels)"]

    def _ordered(self, details, kind):
        """Tensors in the signature's order (the ONNX names, kept by the converter), else as listed."""
        try:
            sig = self.interp.get_signature_list()
            (runner,) = sig.values()
            names = runner[kind]
            by_name = {}
            runner_obj = self.interp.get_signature_runner()
            getter = runner_obj.get_input_details if kind == "inputs" else runner_obj.get_output_details
            for n, d in getter().items():
                by_name[d["index"]] = n
            ordered = sorted(details, key=lambda d: names.index(by_name[d["index"]]))
            for d in ordered:
                d["onnx_name"] = by_name[d["index"]]
            return ordered
        except (ValueError, KeyError, TypeError):
            for d in details:
                d["onnx_name"] = d["name"]
            return details

    def _set(self, feeds: dict):
        # By name (the converter keeps the ONNX names; its signature lists them alphabetically), else by position.
        by_name = all(d["onnx_name"] in feeds for d in self.inputs)
        values = [feeds[d["onnx_name"]] for d in self.inputs] if by_name else list(feeds.values())
        if len(values) != len(self.inputs):
            raise ValueError(f"the model takes {len(self.inputs)} inputs, got {len(values)}")
        for d, value in zip(self.inputs, values):
            value = np.asarray(value)
            scale, zero = _quant(d)
            if np.issubdtype(value.dtype, np.integer) and np.issubdtype(d["dtype"], np.integer) and not scale:
                # integer data (token ids, masks) into an unquantized integer tensor: cast, never scale
                info = np.iinfo(d["dtype"])
                if value.size and (value.min() < info.min or value.max() > info.max):
                    raise ValueError(f"input {d['onnx_name']!r} holds values outside {np.dtype(d['dtype']).name}")
                self.interp.set_tensor(d["index"], _to_tflite(value, d["shape"]).astype(d["dtype"]))
                continue
            a = _to_tflite(value.astype(np.float32), d["shape"])
            if d["dtype"] in (np.int8, np.uint8):
                info = np.iinfo(d["dtype"])
                a = np.clip(np.round(a / scale) + zero, info.min, info.max)
            self.interp.set_tensor(d["index"], a.astype(d["dtype"]))

    def _get(self) -> list:
        outs = []
        for i, d in enumerate(self.outputs):
            a = self.interp.get_tensor(d["index"])
            if d["dtype"] in (np.int8, np.uint8):
                scale, zero = _quant(d)
                a = (a.astype(np.float32) - zero) * scale
            want = self.output_shapes[i] if self.output_shapes else None
            outs.append(_from_tflite(a.astype(np.float32), want))
        return outs

    def run(self, feeds: dict) -> list:
        self._set(feeds)
        self.interp.invoke()
        return self._get()

    def timer(self, feeds: dict):
        self._set(feeds)
        return self.interp.invoke

    def io_details(self) -> dict:
        """Names, shapes, dtypes and quantization parameters a device app needs to feed the model."""
        def describe(d):
            scale, zero = _quant(d)
            return {"name": d["onnx_name"], "tflite_name": d["name"], "shape": [int(x) for x in d["shape"]],
                    "dtype": np.dtype(d["dtype"]).name, "scale": scale, "zero_point": zero}
        return {"inputs": [describe(d) for d in self.inputs], "outputs": [describe(d) for d in self.outputs]}


def open_session(target, path, providers, output_shapes, output_names, input_names, options) -> LiteRTSession:
    return LiteRTSession(path, target.threads, output_shapes, output_names, input_names)


def session_device(session) -> str:
    from ..hostinfo import cpu_name

    return cpu_name()
