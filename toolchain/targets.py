"""Targets are data: targets/NAME.toml says what artifact to make and which runtime proves it.

Adding a target is adding a file (plus, at most, a stage module, a runtime module and their registry rows). The
(format, precision) pair and the target's options pick the stage that makes the artifact (formats.FORMATS lists
the candidates; each stage module's `applies` decides).
"""

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecError
from .formats import FORMATS
from .options import STAGE_TABLES, check_table, defaults
from .spec import _Table

LATENCY_DEFAULTS = {k: v for k, v in defaults("latency").items() if k != "io_binding"}


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
    tables: dict  # quantize / fp16 / convert / nncf / latency tables, after the spec's overrides
    resource: str = ""  # with --scheduler: the Dask resource a worker offers to judge it (toolchain/cluster)

    @property
    def transform(self):
        """The stage module that makes this target's artifact (None: the traced fp32 ONNX ships as is)."""
        import importlib

        for name in FORMATS[self.format].stages[self.precision]:
            module = importlib.import_module(f".stages.{name}", __package__)
            if module.applies(self):
                return module
        return None

    def table(self, name) -> dict:
        return dict(self.tables.get(name, {}))

    @property
    def latency(self) -> dict:
        return {**LATENCY_DEFAULTS, **self.tables.get("latency", {})}


def builtin_targets_dir() -> Path:
    """The target files that ship with the toolchain: package data in an installed wheel; in a checkout,
    toolchain/builtin_targets is a link to the repo's targets/."""
    return Path(__file__).resolve().parent / "builtin_targets"


def default_targets_dir() -> Path:
    return builtin_targets_dir()


def target_dirs(targets_dir=None) -> list:
    """Where target files are looked up, first match wins: --targets-dir, then TOOLCHAIN_TARGETS_DIR (one or
    more directories joined by os.pathsep), then the built-in targets. A user's directory adds targets (or
    replaces one of the same name); it never hides the built-in ones."""
    dirs = [Path(targets_dir)] if targets_dir else []
    dirs += [Path(d) for d in os.environ.get("TOOLCHAIN_TARGETS_DIR", "").split(os.pathsep) if d]
    return [*dirs, builtin_targets_dir()]


def known_targets(targets_dir=None) -> dict:
    """name -> the target file that would be used for it."""
    found = {}
    for d in target_dirs(targets_dir):
        for p in sorted(d.glob("*.toml")) if d.is_dir() else ():
            found.setdefault(p.stem, p)
    return found


def find_target_file(name: str, targets_dir=None) -> Path | None:
    for d in target_dirs(targets_dir):
        p = d / f"{name}.toml"
        if p.is_file():
            return p
    return None


def load_target(name: str, targets_dir=None, overrides=None, spec_path=None) -> Target:
    path = find_target_file(name, targets_dir)
    if path is None:
        known = sorted(known_targets(targets_dir))
        where = spec_path or Path(f"{name}.toml")
        looked = ", ".join(str(d) for d in target_dirs(targets_dir))
        raise SpecError(where, f"targets.{name}", f"no target file {name}.toml in {looked} "
                                                 f"(known targets: {', '.join(known)})")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(path, None, f"invalid TOML: {e}") from None
    except RecursionError:
        raise SpecError(path, None, "invalid TOML: nested too deeply") from None
    except OSError as e:
        raise SpecError(path, None, f"cannot be read ({e.strerror or e})") from None
    checked = check_table(path, "", raw, "target", required=("format", "precision", "runtime"))
    t = _Table(path, "", raw)
    fmt, precision, runtime = checked["format"], checked["precision"], checked["runtime"]
    if precision not in FORMATS[fmt].stages:
        raise SpecError(path, "precision", f"{precision} is not supported for format {fmt}")
    if runtime not in FORMATS[fmt].runtimes:
        raise SpecError(path, "runtime", f"{runtime} cannot run format {fmt} (runs it: "
                                         f"{', '.join(FORMATS[fmt].runtimes)})")
    providers = checked.get("providers", ["CPUExecutionProvider"])
    if runtime == "onnxruntime":
        check_providers(path, providers)
    threads = checked.get("threads", 1)
    tables = {}
    # Every option of every table, the target file's and the spec's overrides, typed and checked here, before
    # any stage runs (an error in an override names the spec and its key).
    for k in STAGE_TABLES:
        own, over = raw.get(k, {}), (overrides or {}).get(k, {})
        check_table(path, k, own, "convert" if k == "convert" else k)
        if over:
            check_table(spec_path or path, f"targets.{name}.{k}", over, "convert" if k == "convert" else k)
        tables[k] = {**own, **over}
    tables["runtime_options"] = _runtime_options(path, t)
    from .executors.config import parse as _executor  # where the artifact is judged (toolchain/executors)

    tables["executor"] = _executor(path, t, name)
    resource = checked.get("resource", "")
    if resource and not re.fullmatch(r"[A-Za-z0-9_.-]+", resource):
        raise SpecError(path, "resource", f"{resource!r}: a Dask resource name takes letters, digits, '_', '.' "
                                          "and '-' only")
    return Target(checked.get("name", name), path, checked.get("description", ""), fmt, precision, runtime,
                  tuple(providers), threads, tables, resource)


def check_providers(path, providers):
    """A provider this onnxruntime does not know at all is a typo in the target file (a known one whose device or
    library is missing here makes the target `skipped` later, with that reason)."""
    import difflib

    import onnxruntime as ort

    known = ort.get_all_providers()
    for i, p in enumerate(providers):
        if p not in known:
            close = difflib.get_close_matches(p, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            raise SpecError(path, f"providers[{i}]", f"unknown execution provider {p!r} for onnxruntime "
                                                     f"{ort.__version__} ({hint})")


def _runtime_options(path, t) -> list:
    """Candidates for the runtime-options search: [[runtime_options]] tables, each with a name and either
    graph_optimization (all|extended|basic|disabled) or provider_options ({PROVIDER = {key = "value"}})."""
    raw = t.data.get("runtime_options", [])
    if not isinstance(raw, list):
        raise SpecError(path, "runtime_options", "must be an array of tables ([[runtime_options]])")
    out, seen = [], set()
    for i, item in enumerate(raw):
        check_table(path, f"runtime_options[{i}]", item, "runtime_options", required=("name",))
        c = _Table(path, f"runtime_options[{i}]", item)
        name = c.get("name", (str,))
        if name in seen:
            raise SpecError(path, c.key("name"), f"duplicate candidate name {name!r}")
        seen.add(name)
        for prov, opts in c.get("provider_options", (dict,), {}).items():
            if not isinstance(opts, dict) or not all(isinstance(v, str) for v in opts.values()):
                raise SpecError(path, c.key(f"provider_options.{prov}"), "must be a table of string options")
        out.append(dict(item))
    return out
