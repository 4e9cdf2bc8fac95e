"""What the CLI and Python users call: build(), and later package() / verify()."""

import json
import os
import shutil
import time
from pathlib import Path

from . import __version__, debris, formats, stamp
from .cache import copy_atomic, write_json_atomic
from .digest import sha256_file
from .errors import EXIT_GATE_FAILED, EXIT_OK, EXIT_STAGE_FAILED, SpecError, StageError, ToolchainError
from .faults import checkpoint
from .gates import judge
from .locking import locked
from .report import markdown, strict_json, target_entry
from .spec import load_spec
from .stages.reference import OUTPUT as REFERENCE
from .versions import TRACKED, versions

PREVIOUS = ".previous-report.json"  # the last finished report while a rebuild runs (not a report: no package reads it)


def build(spec_path, out_root="build", cache_dir=None, targets=None, targets_dir=None, progress=None,
          remote_cache=None, scheduler=None, scheduler_timeout=None):
    """Build every target of one spec. Returns (report dict, exit code).

    Whatever ends a build other than success leaves no report that says passed for its inputs: before any stage
    runs, the stamp is invalidated and an existing report.json is marked `stale` (so a SIGKILL leaves that); a user
    error removes it, a failed shared stage writes a `stage-failed` report, anything else (a bug, Ctrl-C) leaves
    it `stale` with the cause. A new report.json is committed last, after the stamp.

    remote_cache: a shared cache (s3://BUCKET/PREFIX or file:///DIR; default $TOOLCHAIN_REMOTE_CACHE) read
    through the local one; a no-op build never touches it (see remote_cache.py).

    scheduler: a Dask scheduler (tcp://HOST:PORT; default $TOOLCHAIN_SCHEDULER) the nodes run on, with the shared
    cache carrying their outputs (toolchain/cluster); a no-op build never connects to it."""
    from .cache_backends import check_url, resolve
    from .cluster import open_session

    remote_cache = resolve(remote_cache)
    if remote_cache:
        check_url(remote_cache)  # a bad URL fails even when nothing needs building; no network, no import
    session = open_session(scheduler, remote_cache, scheduler_timeout)  # checks only; connects when used
    if session is not None and session is not scheduler:  # opened here: closed here
        try:
            return build(spec_path, out_root, cache_dir, targets, targets_dir, progress, remote_cache, session)
        finally:
            session.close()
    spec = load_build_spec(spec_path, out_root)
    model_dir = Path(out_root) / spec.name
    target_files, options = _stamp_inputs(spec, out_root, cache_dir, targets, targets_dir)
    with locked(model_dir):
        fresh, record = stamp.up_to_date(model_dir, spec, target_files, options)
        report = _read_report(model_dir) if fresh else None
        if report is not None:  # nothing changed: no heavy import, no cache access
            if progress:
                progress.line("build", None, "up to date")
            return report, record["exit_code"]
        from .cache import StageCache
        from .pipeline import Pipeline

        # Debris of builds that were killed: half-written files here (we hold the lock: no live writer), cache
        # entries and converter scratch folders whose owner process is gone.
        debris.remove_temp_files(model_dir)
        StageCache(cache_dir or Path(out_root) / ".cache").reclaim_debris()
        debris.reclaim_system_temp()
        stamp.invalidate(model_dir, "a build started and did not finish")
        _mark_stale(model_dir, f"a rebuild started at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} "
                               f"(PID {os.getpid()}) did not finish: it was killed, or is still running")
        pipe = None
        try:
            pipe = Pipeline(spec, out_root, cache_dir, targets, targets_dir, progress, remote_cache=remote_cache,
                            runner=_cluster_runner(session))
            return _build_locked(spec, pipe, model_dir, target_files, options)
        except StageError as e:
            _write_failure(spec, model_dir, _names(pipe, spec, targets), e.stage, e.cause)
            raise
        except ToolchainError as e:  # bad data: no earlier result may stand as if it still held
            _write_failure(spec, model_dir, _names(pipe, spec, targets), "inputs", str(e))
            raise
        except OSError:  # the machine refused a write: leave nothing that looks like a good build
            _clear_outputs(model_dir, _names(pipe, spec, targets))
            raise
        except BaseException as e:  # a bug, Ctrl-C, a signal: the old report must not stand for these inputs
            stamp.invalidate(model_dir, "the last build did not finish")
            _mark_stale(model_dir, _interruption(e))
            raise


def load_build_spec(spec_path, out_root):
    """load_spec for a build into out_root: a spec that no longer loads stales the reports built from it."""
    try:
        return load_spec(spec_path)
    except SpecError as e:
        _stale_builds_of(spec_path, out_root, e)
        raise


def _stale_builds_of(spec_path, out_root, error):
    """The spec no longer loads, so its model's name is unknown: the builds whose stamp lists this spec file as
    an input must not go on saying `passed` for it (the stamp records every input path, resolved)."""
    spec_file = str(Path(spec_path).resolve())
    try:
        dirs = [d for d in Path(out_root).iterdir() if (d / stamp.STAMP).is_file()]
    except OSError:
        return
    for d in dirs:
        if spec_file in ((stamp.read(d) or {}).get("inputs") or {}):
            with locked(d):
                stamp.invalidate(d, "the build spec no longer loads")
                _mark_stale(d, f"the last build did not start: {error}")


def _cluster_runner(session):
    if session is None:
        return None
    from .cluster.runner import runner

    return runner(session)


def _names(pipe, spec, targets):
    return list(pipe.targets) if pipe is not None else [n for n in spec.targets if not targets or n in targets]


def _interruption(e: BaseException) -> str:
    from .errors import Terminated

    if isinstance(e, Terminated):
        return "the last build was terminated (SIGTERM) before it finished"
    if isinstance(e, KeyboardInterrupt):
        return "the last build was interrupted (Ctrl-C / SIGINT) before it finished"
    detail = " ".join(str(e).split())[:300]
    return f"the last build failed with an internal error ({type(e).__name__}: {detail})"


def _read_report(model_dir):
    """report.json as a dict, or None when it is missing or not a report (a corrupt file is not a crash)."""
    try:
        report = json.loads((model_dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("targets"), dict) else None


def _mark_stale(model_dir, cause):
    """report.json no longer speaks for the inputs being built: keep the last finished report aside (targets of
    other --target runs are merged from it) and leave a report that says `stale`, with why, in its place."""
    path = model_dir / "report.json"
    for n in ("report.md", "report.html"):
        (model_dir / n).unlink(missing_ok=True)
    old = _read_report(model_dir)
    if old is None:
        path.unlink(missing_ok=True)  # a corrupt report is no report
        return
    if old.get("status") != "stale":
        os.replace(path, model_dir / PREVIOUS)
    stale = {"model": old.get("model"), "version": old.get("version"), "toolchain_version": __version__,
             "status": "stale", "reason": cause, "reference": None,
             "targets": {n: {"status": "stale", "reason": cause} for n in old["targets"]}}
    write_json_atomic(path, stale)


def _build_locked(spec, pipe, model_dir, target_files, options):
    fp32, ref, results = pipe.run()
    checkpoint("publish")
    fp32_out = model_dir / "fp32" / f"{spec.name}.fp32.onnx"
    _publish(fp32.file("model.fp32.onnx"), fp32_out)
    # The fp32 PyTorch outputs travel with the build, so `toolchain validate` can judge an artifact on
    # another machine (a GPU host) without torch.
    _publish(ref.file(REFERENCE), model_dir / "fp32" / REFERENCE)
    report = {
        "model": spec.name, "version": spec.version, "toolchain_version": __version__,
        "reference": {"metric": spec.metric, "value": ref.meta["value"], "samples": ref.meta["samples"],
                      "also": ref.meta.get("also", {}), "runtime": "pytorch fp32",
                      "outputs": {o.name: {"metric": o.metric, "value": ref.meta.get("outputs", {}).get(o.name)}
                                  for o in spec.outputs},
                      "onnx_vs_torch_max_abs_error": ref.meta["onnx_vs_torch_max_abs_error"]},
        "fp32_onnx": {"path": str(fp32_out.relative_to(model_dir)), "sha256": fp32.digest("model.fp32.onnx")},
        "provenance": _provenance(spec, pipe),
        "spec_targets": sorted(spec.targets),  # what the spec asks for: `package --require-all` names the missing
        # where this build's time went: seconds per stage that ran (and in which lane: pipeline.Pipeline.run),
        # or cached
        "stage_timings": dict(pipe.timings),
        "targets": {},
    }
    if pipe.placements:  # built on a Dask cluster: where each node ran (validate: the host that measured)
        report["cluster"] = {"nodes": pipe.placements}
    if spec.prune is not None:
        report["prune"] = dict(pipe.prune_entry.meta)
    for name, res in results.items():
        budget = pipe.gates[name]
        target_dir = model_dir / name
        if "error" in res:
            shutil.rmtree(target_dir, ignore_errors=True)  # never leave an older artifact to be trusted
            e = res["error"]
            gate = {"status": "failed", "reason": f"stage {e.stage} failed: {e.cause}"}
        else:
            gate = judge(name, res["validation"], budget, res.get("transform", {}))
            fmt = formats.get(res["target"].format)  # the files that make an artifact of this format
            dest = target_dir / f"{spec.name}.{res['target'].precision}{fmt.suffix}"
            _clear_others(target_dir, fmt.files(dest))
            for src, to in zip(fmt.files(res["artifact"]), fmt.files(dest)):
                _publish(src, to)
            res["published"], res["sha256"] = dest, sha256_file(dest)
            if fmt.own_baseline:  # a baseline of the target's own format
                base = model_dir / "fp32" / f"{spec.name}.{name}.fp32{fmt.suffix}"
                for src, to in zip(fmt.files(res["baseline"]), fmt.files(base)):
                    _publish(src, to)
                res["baseline"] = base
            else:
                res["baseline"] = fp32_out
        report["targets"][name] = target_entry(name, res, gate, model_dir, budget)
    if spec.prune is not None:
        report["prune"]["speedup_vs_unpruned"] = {
            n: t.get("speedup_vs_unpruned") for n, t in report["targets"].items()}
    report["targets"] = _merge_previous(model_dir, report)
    report["status"] = _overall(report)
    checkpoint("report")
    staged = _stage_reports(model_dir, report)
    try:
        checkpoint("stamp")
        outputs = [fp32_out, model_dir / "fp32" / REFERENCE]
        outputs += [model_dir / t[k] for t in report["targets"].values() for k in ("artifact", "baseline")
                    if k in t]
        outputs += [model_dir / c["path"] for t in report["targets"].values()
                    for k in ("companions", "baseline_companions") for c in t.get(k, [])]
        stamp.write(model_dir, spec, target_files, options, outputs + list(staged), pipe.keys, exit_code(report),
                    pending=staged)
        checkpoint("commit")
        # report.json last: until it is in place the stale one stands (and the stamp's record of it differs)
        for name in ("report.json", "report.md", "report.html"):
            os.replace(staged[model_dir / name], model_dir / name)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    (model_dir / PREVIOUS).unlink(missing_ok=True)
    from . import index_report

    index_report.write(model_dir.parent)  # build/index.html: every model of this build directory
    return report, exit_code(report)


def _stage_reports(model_dir, report) -> dict:
    """The three report files written whole beside their final names: final path -> temp path."""
    from .cache import atomic_write
    from .report_html import render

    report["html"] = "report.html"
    texts = {"report.json": json.dumps(strict_json(report), indent=2, sort_keys=True, allow_nan=False) + "\n", "report.md": markdown(report),
             "report.html": render(report)}
    staged = {}
    try:
        for name, text in texts.items():
            tmp = model_dir / f".{name}.staged.tmp"
            atomic_write(tmp, text.encode())
            staged[model_dir / name] = tmp
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    return staged


def _stamp_inputs(spec, out_root, cache_dir, targets, targets_dir):
    from .targets import find_target_file, target_dirs

    names = sorted(targets or spec.targets)
    options = {"targets": names, "targets_dirs": [str(d.resolve()) for d in target_dirs(targets_dir)],
               "out": str(Path(out_root).resolve()),
               "cache_dir": str(Path(cache_dir).resolve()) if cache_dir else None}
    from .executors.config import DEVICES, devices_stamp

    if DEVICES:  # --device: where targets are judged is an input of the build
        options["devices"] = devices_stamp(names)
    # A target with no file here is reported by the pipeline (the stamp cannot be fresh without it).
    return [(find_target_file(n, targets_dir) or Path(f"{n}.toml")).resolve() for n in names], options


def explain(spec_path, out_root="build", cache_dir=None, targets=None, targets_dir=None) -> list:
    """Without building: (label, verdict) for each stage, and whether the build as a whole is up to date."""
    spec = load_spec(spec_path)
    model_dir = Path(out_root) / spec.name
    target_files, options = _stamp_inputs(spec, out_root, cache_dir, targets, targets_dir)
    fresh, record = stamp.up_to_date(model_dir, spec, target_files, options)
    if fresh:
        return [("build", "up to date: nothing changed since the last build")]
    from .pipeline import Pipeline

    previous = (stamp.read(model_dir) or {}).get("stages", {})
    pipe = Pipeline(spec, out_root, cache_dir, targets, targets_dir)
    lines = pipe.explain(previous)
    if all(verdict == "up to date" for _, verdict in lines):
        lines.append(("publish", f"would re-publish outputs and report: {record}"))
    return lines


def validate(spec_path, out_root="build", targets=None, targets_dir=None, progress=None):
    """Re-validate already built artifacts on this machine (e.g. the cuda target on a GPU host), without
    rebuilding and without torch. Updates those targets in report.json. Returns (report, exit code)."""
    from .data import check_inputs, load_arrays
    from .stages import reference
    from .targets import load_target
    from .validation import target as validate_target
    from .validation.metrics import output_gates

    spec = load_spec(spec_path, need_weights=False)
    model_dir = Path(out_root) / spec.name
    with locked(model_dir):
        report = _read_report(model_dir)
        if report is None:
            raise ToolchainError(f"{model_dir / 'report.json'}: no build to validate (run toolchain build first)")
        if report.get("status") not in ("passed", "failed", "stage-failed") or not report.get("reference"):
            raise ToolchainError(f"{model_dir / 'report.json'}: the last build did not finish "
                                 f"({report.get('status')}: {report.get('reason', 'no reason recorded')}); "
                                 "rebuild before validating")
        names = targets or [n for n, t in report["targets"].items() if "artifact" in t]
        evaluation = load_arrays(spec.evaluation, spec, "evaluation")
        check_inputs(evaluation, spec, "evaluation data", evaluation=True)
        ref_outputs = reference.load(model_dir / "fp32")
        for name in names:
            entry = report["targets"].get(name)
            if not entry or "artifact" not in entry:
                raise ToolchainError(f"{model_dir / 'report.json'}: target {name!r} has no built artifact")
            target = load_target(name, targets_dir, spec.targets[name].overrides, spec.path)
            artifact, baseline = model_dir / entry["artifact"], model_dir / entry["baseline"]
            companions = [(model_dir / c["path"], c["sha256"]) for c in entry.get("companions", [])]
            for f, want in ((artifact, entry["sha256"]), *companions):  # every file of the artifact
                if sha256_file(f) != want:
                    raise ToolchainError(f"{f}: sha256 differs from report.json; rebuild before validating")
            if progress:
                progress.line("validate", name, "running")
            gates = output_gates(spec, name, target.precision)
            ref_values = {o: r["value"] for o, r in (report["reference"].get("outputs") or {}).items()
                          if r.get("value") is not None}
            v = validate_target.run(target, artifact, baseline, evaluation, ref_outputs, spec, ref_values)
            res = {"target": target, "validation": v, "transform": entry.get("build", {}), "published": artifact,
                   "sha256": entry["sha256"], "baseline": baseline}
            gate = judge(name, v, gates, res["transform"])
            report["targets"][name] = target_entry(name, res, gate, model_dir, gates)
        report["status"] = _overall(report)
        _write_reports(model_dir, report)
    return report, exit_code(report)


def _write_reports(model_dir, report):
    from . import index_report
    from .report_html import render

    report["html"] = "report.html"
    _write_text(model_dir / "report.html", render(report))
    write_json_atomic(model_dir / "report.json", strict_json(report))
    _write_text(model_dir / "report.md", markdown(report))
    index_report.write(model_dir.parent)  # build/index.html: every model of this build directory


def _provenance(spec, pipe):
    return {"spec": str(spec.path), "spec_sha256": sha256_file(spec.path), "weights_sha256": pipe.weights_digest,
            "model_digest": pipe.model_digest, "calibration_sha256": pipe.calibration_digest,
            "evaluation_sha256": pipe.evaluation_digest, "libraries": versions(TRACKED)}


def _merge_previous(model_dir, report):
    """Targets built by an earlier run of the same inputs (e.g. `--target arm64` after `--target x86_64`) stay,
    when their artifact is still the file that run published."""
    old = None
    for name in (PREVIOUS, "report.json"):
        try:
            old = json.loads((model_dir / name).read_text())
        except (OSError, ValueError):
            continue
        break
    if not isinstance(old, dict) or not isinstance(old.get("targets"), dict) or old.get("status") == "stale":
        return report["targets"]
    if (old.get("provenance") or {}).get("model_digest") != report["provenance"]["model_digest"]:
        return report["targets"]
    merged = {}
    for k, v in old["targets"].items():
        if k in report["targets"] or not isinstance(v, dict) or not isinstance(v.get("artifact"), str):
            continue
        f = model_dir / v["artifact"]
        if f.is_file() and sha256_file(f) == v.get("sha256"):
            merged[k] = v
    merged.update(report["targets"])
    return merged


def _overall(report):
    statuses = [t["status"] for t in report["targets"].values()]
    if any(t.get("failed_stage") for t in report["targets"].values()):
        return "stage-failed"
    return "failed" if "failed" in statuses else "passed"


def exit_code(report) -> int:
    return {"passed": EXIT_OK, "failed": EXIT_GATE_FAILED, "stage-failed": EXIT_STAGE_FAILED}[report["status"]]


def _publish(src, dest: Path):
    if dest.is_file() and sha256_file(dest) == sha256_file(src):
        return
    copy_atomic(src, dest)


def _clear_others(target_dir: Path, keep: list):
    if target_dir.is_dir():
        for p in target_dir.iterdir():
            if p not in keep and p.is_file():
                p.unlink()


def _write_text(path: Path, text: str):
    from .cache import atomic_write

    atomic_write(path, text.encode())


def _clear_outputs(model_dir, names):
    """Best effort (the disk may still be full): remove the stamp, the reports and the targets' artifacts."""
    for p in [model_dir / stamp.STAMP, model_dir / "report.json", model_dir / "report.md", model_dir / "report.html",
              model_dir / PREVIOUS]:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass
    for n in [*names, "fp32"]:
        shutil.rmtree(model_dir / n, ignore_errors=True)


def _write_failure(spec, model_dir, names, stage, cause):
    """A shared stage or the inputs failed: no target was built. The report says where and why, and no
    earlier artifact or stamp is left to be trusted."""
    report = {"model": spec.name, "version": spec.version, "toolchain_version": __version__,
              "status": "stage-failed" if stage != "inputs" else "error", "reference": None,
              "reason": f"stage {stage} failed: {cause}",
              "targets": {n: {"status": "failed", "reason": f"{stage} failed: {cause}", "failed_stage": stage,
                              "max_metric_drop": spec.targets[n].max_metric_drop} for n in names}}
    for n in names:
        shutil.rmtree(model_dir / n, ignore_errors=True)
    (model_dir / stamp.STAMP).unlink(missing_ok=True)
    for n in ("report.md", "report.html"):
        (model_dir / n).unlink(missing_ok=True)
    if stage == "inputs":  # a user error (exit 2): the error line says it all; no report, nothing stale
        (model_dir / "report.json").unlink(missing_ok=True)
        return
    write_json_atomic(model_dir / "report.json", strict_json(report))
