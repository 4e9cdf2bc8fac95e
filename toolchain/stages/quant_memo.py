"""Weights quantized once per plan, not once per variant.

The x86 plan makes dozens of variants of one model that differ only in which nodes stay float; ONNX Runtime's QDQ
quantizer recomputes every weight's per-channel scales and quantized copy for each of them, in a Python loop over
channels: measured on the MobileNetV3-Small-like suite model, about 70% of the ~3 s a variant took, and with 78
variants the plan's whole time budget went to making them (its speed search never ran). Both steps are pure
functions of the weight and the settings, so while a `memo` is active the quantizer's two helpers
(qdq_quantizer.compute_data_quant_params and quantize_onnx_initializer) answer repeated questions from a cache. The
results are the same objects' values: tests/test_plan_recipe.py checks a memoized variant against quantize_static.
"""

import contextlib
import hashlib


class WeightMemo:
    def __init__(self):
        self.params, self.weights = {}, {}
        self.hits = self.misses = 0

    def _params_key(self, data, args, kwargs):
        import numpy as np

        a = np.ascontiguousarray(data)
        digest = hashlib.blake2b(a.tobytes(), digest_size=16).digest()
        return (digest, a.dtype.str, a.shape, repr(args), repr(sorted(kwargs.items())))

    @contextlib.contextmanager
    def active(self):
        """Route ORT's QDQ quantizer's weight helpers through this memo for the duration of the block."""
        from onnxruntime.quantization import qdq_quantizer

        params_fn, weight_fn = qdq_quantizer.compute_data_quant_params, qdq_quantizer.quantize_onnx_initializer

        def params(data, *args, **kwargs):
            key = self._params_key(data, args, kwargs)
            if key not in self.params:
                self.misses += 1
                self.params[key] = params_fn(data, *args, **kwargs)
            else:
                self.hits += 1
            zp, scale = self.params[key]
            return zp.copy(), scale.copy()

        def weight(proto, quant_type, zero_point, scale, axis=None, *args, **kwargs):
            import onnx

            key = (proto.name, hashlib.blake2b(proto.SerializeToString(), digest_size=16).digest(), quant_type,
                   axis, zero_point.tobytes(), scale.tobytes(), repr(args), repr(sorted(kwargs.items())))
            if key not in self.weights:
                self.weights[key] = weight_fn(proto, quant_type, zero_point, scale, axis, *args, **kwargs)
            out = onnx.TensorProto()
            out.CopyFrom(self.weights[key])
            return out

        qdq_quantizer.compute_data_quant_params, qdq_quantizer.quantize_onnx_initializer = params, weight
        try:
            yield self
        finally:
            qdq_quantizer.compute_data_quant_params, qdq_quantizer.quantize_onnx_initializer = params_fn, weight_fn
