"""Targets are data: targets/NAME.toml says what artifact to make and which runtime proves it.

Adding a target is adding a file (plus, at most, a runtime module). The (format, precision) pair picks
the stage that makes the artifact from the traced fp32 ONNX; see TRANSFORMS.
"""

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecError
from .spec import _Table, _in_range, _one_of

# (format, precision) -> the stage that turns the fp32 ONNX graph into the artifact (None: ship fp32 as is).
TRANSFORMS = {
    ("onnx", "fp32"): None,
    ("onnx", "int8"): "quantize",
    ("onnx", "fp16"): "fp16",
    ("tflite", "int8"): "tflite",
}
RUNTIMES = ("onnxruntime", "litert")
LATENCY_DEFAULTS = {"warmup": 20, "runs": 200, "batch": 1}


@dataclass(frozen=True)
class Target:
    name: str
    path: Path
    description: str
    format: str
    precision: str
    runtime: str
    providers: tuple
    threads: int
    tables: dict  # quantize / fp16 / convert / latency tables, after the spec's overrides

    @property
    def transform(self):
        return TRANSFORMS[(self.format, self.precision)]

    def table(self, name) -> dict:
        return dict(self.tables.get(name, {}))

    @property
    def latency(self) -> dict:
        return {**LATENCY_DEFAULTS, **self.tables.get("latency", {})}


def default_targets_dir() -> Path:
    env = os.environ.get("TOOLCHAIN_TARGETS_DIR")
    if env:
        return Path(env)
    # The repo's targets/ (editable install or source checkout), next to the package.
    return Path(__file__).resolve().parent.parent / "targets"


def load_target(name: str, targets_dir=None, overrides=None, spec_path=None) -> Target:
    targets_dir = Path(targets_dir or default_targets_dir())
    path = targets_dir / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in targets_dir.glob("*.toml"))
        where = spec_path or path
        raise SpecError(where, f"targets.{name}", f"no target file {path} (known targets: {', '.join(known)})")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(path, None, f"invalid TOML: {e}") from None
    t = _Table(path, "", raw)
    t.reject_unknown({"name", "description", "format", "precision", "runtime", "providers", "threads",
                      "quantize", "fp16", "convert", "latency", "runtime_options", "executor", "emulated", "ssh"})
    fmt = t.get("format", (str,), check=_one_of(("onnx", "tflite")))
    precision = t.get("precision", (str,), check=_one_of(("fp32", "fp16", "int8")))
    if (fmt, precision) not in TRANSFORMS:
        raise SpecError(path, "precision", f"{precision} is not supported for format {fmt}")
    runtime = t.get("runtime", (str,), check=_one_of(RUNTIMES))
    providers = t.get("providers", (list,), ["CPUExecutionProvider"])
    threads = t.get("threads", (int,), 1, check=_in_range(0, 256))
    tables = {}
    for k in ("quantize", "fp16", "convert", "latency"):
        tables[k] = {**t.get(k, (dict,), {}), **(overrides or {}).get(k, {})}
    checks = [(path, "latency", tables["latency"])]
    if "latency" in (overrides or {}):  # an error in the spec's override names the spec and its key
        checks.insert(0, (spec_path or path, f"targets.{name}.latency", overrides["latency"]))
    for where, prefix, table in checks:
        lat = _Table(where, prefix, table)
        lat.reject_unknown({"warmup", "runs", "batch", "io_binding"})
        for k in ("warmup", "runs", "batch"):
            lat.get(k, (int,), 1, check=_in_range(1, 100_000))
    tables["runtime_options"] = _runtime_options(path, t)
    from .executors.config import parse as _executor  # where the artifact is judged (toolchain/executors)

    tables["executor"] = _executor(path, t, name)
    return Target(t.get("name", (str,), name), path, t.get("description", (str,), ""), fmt, precision, runtime,
                  tuple(providers), threads, tables)


def _runtime_options(path, t) -> list:
    """Candidates for the runtime-options search: [[runtime_options]] tables, each with a name and either
    graph_optimization (all|extended|basic|disabled) or provider_options ({PROVIDER = {key = "value"}})."""
    raw = t.data.get("runtime_options", [])
    if not isinstance(raw, list):
        raise SpecError(path, "runtime_options", "must be an array of tables ([[runtime_options]])")
    out, seen = [], set()
    for i, item in enumerate(raw):
        c = _Table(path, f"runtime_options[{i}]", item)
        c.reject_unknown({"name", "graph_optimization", "provider_options"})
        name = c.get("name", (str,))
        if name in seen:
            raise SpecError(path, c.key("name"), f"duplicate candidate name {name!r}")
        seen.add(name)
        c.get("graph_optimization", (str,), "all", check=_one_of(("all", "extended", "basic", "disabled")))
        for prov, opts in c.get("provider_options", (dict,), {}).items():
            if not isinstance(opts, dict) or not all(isinstance(v, str) for v in opts.values()):
                raise SpecError(path, c.key(f"provider_options.{prov}"), "must be a table of string options")
        out.append(dict(item))
    return out
