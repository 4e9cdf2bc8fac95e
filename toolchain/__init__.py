"""toolchain: build a PyTorch model into validated per-target edge artifacts.

    import toolchain
    result = toolchain.build(model, inputs={"input": (1, 3, 32, 32)}, calibration=x, targets=["x86_64"])
    toolchain.package("build", "1.0.0", "dist/models-1.0.0"); toolchain.verify("dist/models-1.0.0.tar.gz")

Nothing heavy is imported here (python_api imports its frameworks inside each call): a cached no-op build must not
pay for torch or TensorFlow.
"""

__version__ = "0.1.0"

from .python_api import BuildResult, TargetResult, build, package, validate, verify  # noqa: E402

__all__ = ["build", "validate", "package", "verify", "BuildResult", "TargetResult", "__version__"]
