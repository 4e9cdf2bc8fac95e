"""Every option of every table a target file (or a build spec's [targets.NAME] override) may set: its type, its
default and the values it allows, in one data-driven place. targets.py checks whole target files against it before
any stage runs, and each stage's params_for takes its defaults and checks from it, so `per_channel = "false"` is
an error naming the file and key, never a string a stage later reads as true.

SCHEMAS: table -> option -> Option(kind, default, allowed). kind is one of KINDS; allowed is None, a tuple of the
values allowed, or a Range. A table missing here takes no options. Nothing here imports a heavy framework.
"""

from typing import NamedTuple

from .errors import SpecError
from .formats import FORMATS
from .runtimes import RUNTIMES


class Range(NamedTuple):
    lo: float
    hi: float
    lo_open: bool = False  # (lo, hi] instead of [lo, hi]


class Option(NamedTuple):
    kind: str
    default: object
    allowed: object = None


# kind -> (the Python types TOML gives it, how an error message names it)
KINDS = {"bool": ((bool,), "true/false"), "int": ((int,), "an integer"), "number": ((float,), "a number"),
         "str": ((str,), "a string"), "strs": ((list,), "a list of strings"), "table": ((dict,), "a table"),
         "tables": ((list,), "an array of tables")}

SECONDS = Range(0, 86400 * 7, lo_open=True)
# The plan tries them in this order within its time budget: int8 (signed) activations last, because on VNNI CPUs
# ONNX Runtime leaves convs float between their Q/DQ pairs (2.3x slower than static_u8s8 on the ResNet-18-like
# suite model, dropped as > 1.5x slower on the MobileNetV3-Small-like one) and its search used the time the others need.
# dynamic_s8_fused is tried on transformers only (skipped on other graphs after one scan).
QUANTIZE_SCHEMES = ("static_u8s8", "dynamic_s8", "dynamic_s8_fused", "static_u8s8_by_resolution", "static_s8s8")

SCHEMAS = {
    # the top level of targets/NAME.toml
    "target": {
        "name": Option("str", None), "description": Option("str", ""),
        # formats and runtimes come from their registries (formats.py, runtimes/__init__.py)
        "format": Option("str", None, tuple(FORMATS)), "precision": Option("str", None, ("fp32", "fp16", "int8")),
        "runtime": Option("str", None, tuple(RUNTIMES)),
        "providers": Option("strs", ["CPUExecutionProvider"]), "threads": Option("int", 1, Range(0, 256)),
        "quantize": Option("table", {}), "fp16": Option("table", {}), "convert": Option("table", {}),
        "latency": Option("table", {}), "nncf": Option("table", {}), "runtime_options": Option("tables", []),
        # where the artifact is judged (toolchain/executors/config.py checks the executor's own tables)
        "executor": Option("str", "local", ("local", "emulated", "ssh")),
        "emulated": Option("table", {}), "ssh": Option("table", {}),
        # the Dask resource a worker offers to judge this target (toolchain/cluster; "": from the runtime)
        "resource": Option("str", ""),
    },
    # ONNX Runtime's quantizer (stages/quantize.py; method = "auto": the precision plan, stages/plan.py)
    "quantize": {
        "method": Option("str", "static", ("static", "dynamic", "auto")),
        "per_channel": Option("bool", True),
        "activation_type": Option("str", "uint8", ("uint8", "int8")),
        "weight_type": Option("str", "int8", ("uint8", "int8")),
        "calibrate_method": Option("str", "minmax", ("minmax", "entropy", "percentile")),
        "nodes_to_exclude": Option("strs", []), "op_types_to_quantize": Option("strs", []),
        "preprocess": Option("bool", True),
        "schemes": Option("strs", list(QUANTIZE_SCHEMES), QUANTIZE_SCHEMES),
        "force_float": Option("strs", []), "force_int8": Option("strs", []),
        "time_budget_s": Option("number", 300, Range(1, 86400)),
        "speed_search": Option("bool", True),
    },
    # onnxconverter-common's fp16 conversion (stages/fp16.py)
    "fp16": {
        "keep_io_types": Option("bool", True), "op_block_list": Option("strs", []), "range_guard": Option("bool", True),
    },
    # the TFLite conversion, onnx2tf route (stages/tflite.py, tflite_plan.py)
    "convert": {
        "converter": Option("str", "onnx2tf", ("onnx2tf", "litert-torch")),
        "timeout_s": Option("number", 900, SECONDS),
        "per_channel": Option("bool", True),
        "extra_flags": Option("table", {}),
        "routes": Option("str", "auto", ("auto", "plain")),
        "precision": Option("str", "full_integer", ("full_integer", "auto")),
        "force_float": Option("strs", []), "force_int8": Option("strs", []),
        "plan_time_budget_s": Option("number", 600, SECONDS),
        # a split artifact: it ends at these ONNX tensors and the app's function runs the rest (stages/tflite.py)
        "split_at": Option("strs", []), "app_postprocess": Option("str", ""),
        "speed_search": Option("bool", True),  # arm64 plan: search speed on the ARM cost model where it exists
    },
    # the TFLite conversion, litert-torch route (stages/litert_torch.py): convert.converter = "litert-torch"
    "convert:litert-torch": {
        "converter": Option("str", "litert-torch", ("litert-torch",)),
        "recipe": Option("str", "dynamic_wi8_afp32",
                         ("dynamic_wi8_afp32", "dynamic_legacy_wi8_afp32", "weight_only_wi8_afp32")),
        "timeout_s": Option("number", 900, SECONDS),
        "venv": Option("str", ".venv-litert"),
    },
    # NNCF post-training quantization of an OpenVINO IR (stages/openvino_int8.py)
    "nncf": {
        "preset": Option("str", "performance", ("performance", "mixed")),
        "subset_size": Option("int", 300, Range(1, 100_000)),
        "fast_bias_correction": Option("bool", True),
        "model_type": Option("str", "default", ("default", "transformer")),
    },
    # the latency protocol (validation/latency.py)
    "latency": {
        "warmup": Option("int", 20, Range(1, 100_000)), "runs": Option("int", 200, Range(1, 100_000)),
        "batch": Option("int", 1, Range(1, 100_000)), "io_binding": Option("bool", False),
    },
    # one [[runtime_options]] candidate
    "runtime_options": {
        "name": Option("str", None), "graph_optimization": Option("str", "all", ("all", "extended", "basic", "disabled")),
        "provider_options": Option("table", {}),
    },
}
# A table's options as a target file may hold them: the convert table serves both routes.
TABLE_OPTIONS = {**SCHEMAS, "convert": {**SCHEMAS["convert:litert-torch"], **SCHEMAS["convert"]}}
# The option tables a target file (or a spec's [targets.NAME] override) may hold: quantize, fp16, convert, nncf,
# latency ... every table of the target schema that has a schema of its own.
STAGE_TABLES = tuple(k for k, o in SCHEMAS["target"].items() if o.kind == "table" and k in TABLE_OPTIONS)


def defaults(schema: str) -> dict:
    """The stage defaults (fresh copies: callers may change lists)."""
    import copy

    return {k: copy.deepcopy(o.default) for k, o in SCHEMAS[schema].items() if o.default is not None}


def _check_value(option: Option):
    def check(v):
        if option.kind == "strs" and not all(isinstance(x, str) for x in v):
            return f"must be a list of strings, got {v!r}"
        allowed = option.allowed
        if isinstance(allowed, Range):
            ok = (allowed.lo < v if allowed.lo_open else allowed.lo <= v) and v <= allowed.hi
            return None if ok and v == v else \
                f"must be in {'(' if allowed.lo_open else '['}{allowed.lo}, {allowed.hi}], got {v!r}"
        if allowed is not None:
            values = v if option.kind == "strs" else [v]
            bad = [x for x in values if x not in allowed]
            if bad:
                return f"must be one of {', '.join(map(str, allowed))}, got {bad[0]!r}"
        return None
    return check


def check_table(path, prefix, table, schema: str, required=()) -> dict:
    """Every key of `table` known to the schema (did-you-mean otherwise) and of its declared type and values.
    Returns the table as given (TOML integers where numbers are wanted become floats); names `path: prefix.key`."""
    from .spec import _Table

    options = TABLE_OPTIONS[schema]
    t = _Table(path, prefix, table)
    t.reject_unknown(set(options))
    out = {}
    for k, option in options.items():
        if k not in t.data:
            if k in required:
                t.get(k, KINDS[option.kind][0])  # raises "is required"
            continue
        types, what = KINDS[option.kind]
        out[k] = t.get(k, types, check=_check_value(option), what=what)
    return out
