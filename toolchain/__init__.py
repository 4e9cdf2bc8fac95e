"""toolchain: build a PyTorch model into validated per-target edge artifacts.

Nothing heavy is imported here: a cached no-op build must not pay for torch or TensorFlow.
"""

__version__ = "0.1.0"
