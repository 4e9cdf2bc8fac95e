"""The target-file option reference in README.md, generated from the schemas (options.SCHEMAS and their one-line
descriptions, options_doc.DESCRIPTIONS). `python -m toolchain.options_doc README.md` rewrites the block between
the markers; tests/test_option_walk.py fails when the README's block is stale or an option has no description."""

import sys
from pathlib import Path

from .options import SCHEMAS, Range

START, END = "<!-- options:begin (generated: python -m toolchain.options_doc README.md) -->", "<!-- options:end -->"

# What each table is, and where it is read.
TABLES = {
    "target": "the top level of `targets/NAME.toml`",
    "quantize": "`[quantize]`: ONNX Runtime's quantizer (`stages/quantize.py`; `method = \"auto\"`: `stages/plan.py`)",
    "fp16": "`[fp16]`: onnxconverter-common's fp16 conversion (`stages/fp16.py`)",
    "convert": "`[convert]`: TFLite by onnx2tf (`stages/tflite.py`)",
    "convert:litert-torch": "`[convert]` with `converter = \"litert-torch\"`: TFLite from PyTorch (`stages/litert_torch.py`)",
    "nncf": "`[nncf]`: NNCF post-training quantization of an OpenVINO IR (`stages/openvino_int8.py`)",
    "latency": "`[latency]`: the interleaved latency protocol (`validation/latency.py`)",
    "runtime_options": "`[[runtime_options]]`: one candidate of the runtime-options search (`validation/target.py`)",
}

# table.option -> one line: what it does.
DESCRIPTIONS = {
    "target.name": "the target's name (default: the file's stem)",
    "target.description": "one line for `toolchain targets` and the report",
    "target.format": "artifact format (`toolchain/formats.py`)",
    "target.precision": "artifact precision; the format's row lists the stages per precision",
    "target.runtime": "runtime that judges the artifact (`toolchain/runtimes/`)",
    "target.providers": "ONNX Runtime execution providers, first = the one that must run it",
    "target.threads": "intra-op threads for validation and latency",
    "target.quantize": "ONNX Runtime quantizer options",
    "target.fp16": "fp16 conversion options",
    "target.convert": "TFLite conversion options",
    "target.latency": "latency protocol",
    "target.nncf": "NNCF quantization options (OpenVINO)",
    "target.runtime_options": "runtime-options candidates searched at validation",
    "target.executor": "where the artifact is judged (`toolchain/executors/`)",
    "target.emulated": "the emulated aarch64 executor's settings",
    "target.ssh": "the ssh executor's settings",
    "target.resource": "with `--scheduler`: the Dask resource (a device label) a worker must offer to validate this "
                       "target; empty: arm64 (LiteRT), cuda (CUDA provider first) or x86_64",
    "quantize.method": "static QDQ on calibration data, dynamic, or the measured precision plan",
    "quantize.per_channel": "per-channel weight scales",
    "quantize.activation_type": "activation integer type (uint8 keeps convolutions in QLinearConv here)",
    "quantize.weight_type": "weight integer type",
    "quantize.calibrate_method": "how activation ranges are calibrated",
    "quantize.nodes_to_exclude": "node names kept float",
    "quantize.op_types_to_quantize": "only these op types are quantized (empty: ORT's default set)",
    "quantize.preprocess": "run ORT's quant_pre_process (shape inference, fusions) first",
    "quantize.schemes": "plan: the schemes tried",
    "quantize.force_float": "plan: node-name patterns always kept float",
    "quantize.force_int8": "plan: node-name patterns never kept float",
    "quantize.time_budget_s": "plan: seconds for the whole stage; the search stops in time for its closing steps",
    "quantize.speed_search": "plan: time each kind of compute node kept float",
    "fp16.keep_io_types": "inputs and outputs stay float32",
    "fp16.op_block_list": "op types kept float32",
    "fp16.range_guard": "keep float32 the nodes whose values exceed fp16's range on calibration data",
    "convert.converter": "onnx2tf (from the traced ONNX) or litert-torch (from PyTorch, side venv)",
    "convert.timeout_s": "seconds before the converter child is killed",
    "convert.per_channel": "per-channel weight scales",
    "convert.extra_flags": "extra onnx2tf flags",
    "convert.routes": "auto: rewrites and flags picked from the graph's ops; plain: the graph as it is",
    "convert.precision": "full_integer, or auto: the arm64 precision plan",
    "convert.force_float": "plan: op patterns always kept float",
    "convert.force_int8": "plan: op patterns never kept float",
    "convert.plan_time_budget_s": "plan: seconds before it ships the best plan so far",
    "convert.speed_search": "arm64 plan: search speed on the ARM cost model (instruction counts) where it exists",
    "convert.split_at": "ONNX tensors where a split artifact ends (a detector's raw heads); the app runs the rest",
    "convert.app_postprocess": "`module:function` the app runs on a split artifact's outputs; the build judges "
                               "the artifact through it",
    "convert:litert-torch.converter": "litert-torch",
    "convert:litert-torch.recipe": "ai-edge-quantizer recipe",
    "convert:litert-torch.timeout_s": "seconds before the converter child is killed",
    "convert:litert-torch.venv": "the side venv (litert-torch, ai-edge-quantizer), relative to the checkout",
    "nncf.preset": "performance: symmetric activations; mixed: asymmetric activations",
    "nncf.subset_size": "calibration samples NNCF reads (at most the spec's calibration data)",
    "nncf.fast_bias_correction": "NNCF's fast bias correction (false: the slower, more exact one)",
    "nncf.model_type": "transformer: NNCF's transformer-aware scheme",
    "latency.warmup": "runs before timing",
    "latency.runs": "timed runs per candidate, interleaved with the baseline",
    "latency.batch": "batch size of the timed runs",
    "latency.io_binding": "GPU: inputs and outputs stay on the device",
    "runtime_options.name": "the candidate's name (recorded with the artifact)",
    "runtime_options.graph_optimization": "ONNX Runtime graph optimization level",
    "runtime_options.provider_options": "per-provider options, `{PROVIDER = {key = \"value\"}}`",
}


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _allowed(a) -> str:
    if a is None:
        return ""
    if isinstance(a, Range):
        return f"{'(' if a.lo_open else '['}{a.lo:g}, {a.hi:g}]"
    return ", ".join(str(x) for x in a)


def markdown() -> str:
    lines = []
    for table, options in SCHEMAS.items():
        lines += [f"**{TABLES[table]}**", "", "| option | type | default | allowed | what it does |",
                  "|---|---|---|---|---|"]
        for name, o in options.items():
            default = "required" if o.default is None and name in ("format", "precision", "runtime") else \
                ("-" if o.default is None else _value(o.default))
            lines.append(f"| `{name}` | {o.kind} | {default} | {_allowed(o.allowed)} | "
                         f"{DESCRIPTIONS[f'{table}.{name}']} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def replace_block(text: str, block: str) -> str:
    from .markdown_block import replace_between

    return replace_between(text, START, END, block, "the option reference")


def main(argv):
    path = Path(argv[0] if argv else "README.md")
    path.write_text(replace_block(path.read_text(encoding="utf-8"), markdown()), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
