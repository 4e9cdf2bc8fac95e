"""Make's manners: after a build, a stamp records every input file (stat + sha256), the library versions,
the host, the published outputs and each stage's key inputs. The next `toolchain build` compares stats first
and digests only files whose stats changed (as make and doit do): when nothing changed it returns without
importing torch, TensorFlow or onnx2tf, and without touching the cache. The stage keys let --explain say
why a stage would rerun."""

import json
import os
from pathlib import Path

from . import __version__
from .digest import sha256_file, sha256_json
from .hostinfo import host_id
from .imports import module_sources
from .spec import is_callable_ref
from .versions import TRACKED, versions

STAMP = ".stamp.json"


def input_files(spec, targets) -> list:
    files = [spec.path, spec.weights, *module_sources(spec.factory, spec.python_path)]
    refs = [spec.calibration, spec.evaluation] + ([spec.prune.train] if spec.prune and spec.prune.train else [])
    for ref in refs:
        files += module_sources(ref, spec.python_path) if is_callable_ref(ref) else [Path(spec.resolve(ref))]
    files += [t.path for t in targets.values()] if isinstance(targets, dict) else list(targets)
    for o in spec.outputs:  # a user metric's code judges the build: editing it must re-judge
        if o.metric and is_callable_ref(o.metric):
            files += module_sources(o.metric, spec.python_path)
    files += [o.class_names_file for o in spec.outputs if o.class_names_file]  # labels carried in the artifacts
    for req in spec.targets.values():  # a split artifact is judged through the app's post-processing code
        post = req.overrides.get("convert", {}).get("app_postprocess")
        if isinstance(post, str) and is_callable_ref(post):
            files += module_sources(post, spec.python_path)
    # The toolchain's own code: an upgrade or a local edit must not be mistaken for "nothing changed".
    files += [p for p in Path(__file__).resolve().parent.rglob("*.py") if "__pycache__" not in p.parts]
    return sorted({str(Path(f).resolve()) for f in files})


def _stat(path):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def context(spec, options: dict) -> dict:
    """What, besides files, decides a build's result: toolchain and library versions, host, options."""
    return {"toolchain": __version__, "libraries": versions(TRACKED), "host": host_id(),
            "options": sha256_json(options)}


def write(model_dir: Path, spec, target_files, options, outputs, stages, exit_code, pending=None):
    """pending: final path -> a whole temp file that will be renamed onto it after the stamp (a rename keeps
    size and mtime), so the report can be committed last."""
    from .cache import write_json_atomic

    pending = pending or {}
    record = {
        "context": context(spec, options),
        "inputs": {f: [*_stat(f), sha256_file(f)] for f in input_files(spec, target_files)},
        "outputs": {str(p): _stat(pending.get(p, p)) for p in outputs},
        # Keep what earlier builds recorded of stages this one did not plan (e.g. another --target), so
        # --explain can still say what changed for them.
        "stages": {**(read(model_dir) or {}).get("stages", {}), **stages},
        "exit_code": exit_code,
    }
    write_json_atomic(model_dir / STAMP, record)


def invalidate(model_dir: Path, why: str):
    """The next build must rerun (a build began, or ended other than by success); keep the stage keys for
    --explain."""
    from .cache import write_json_atomic

    record = read(model_dir)
    if record is None:
        (model_dir / STAMP).unlink(missing_ok=True)
        return
    record["incomplete"] = why
    write_json_atomic(model_dir / STAMP, record)


def read(model_dir: Path):
    try:
        record = json.loads((model_dir / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def up_to_date(model_dir: Path, spec, target_files, options) -> tuple:
    """(True, record) when nothing changed since the stamp was written; else (False, first reason)."""
    try:
        return _up_to_date(model_dir, spec, target_files, options)
    except (KeyError, TypeError, ValueError):  # a damaged stamp is no stamp
        return False, "the stamp is unreadable"


def _up_to_date(model_dir: Path, spec, target_files, options) -> tuple:
    record = read(model_dir)
    if not isinstance(record, dict):
        return False, "no previous build"
    if record.get("incomplete"):
        return False, record["incomplete"]
    if record.get("context") != context(spec, options):
        return False, "toolchain, library versions, host or options changed"
    files = input_files(spec, target_files)
    if sorted(record["inputs"]) != files:
        return False, "the set of input files changed"
    for f, (size, mtime, digest) in record["inputs"].items():
        try:
            stat = _stat(f)
        except OSError:
            return False, f"input missing: {f}"
        if stat != [size, mtime] and sha256_file(f) != digest:
            return False, f"input changed: {f}"
    for p, stat in record["outputs"].items():
        try:
            if _stat(p) != stat:
                return False, f"output changed: {p}"
        except OSError:
            return False, f"output missing: {p}"
    return True, record
