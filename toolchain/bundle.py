"""Release bundles: `package` collects every passed artifact of a build directory with manifest.json
(checksums, signatures, validation figures, provenance) into a directory and a reproducible .tar.gz;
`verify` checks a bundle, refusing archive members that would escape the directory it unpacks into."""

import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from . import __version__
from .cache import write_json_atomic
from .digest import sha256_file
from . import debris, formats
from .errors import EXIT_GATE_FAILED, EXIT_VERIFY_FAILED, ToolchainError
from .provenance import FILES as PROVENANCE_FILES
from .provenance import model_provenance
from .provenance import write as write_provenance

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
_ONNX_TYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 2: "uint8", 3: "int8", 9: "bool"}


class VerifyError(ToolchainError):
    exit_code = EXIT_VERIFY_FAILED


class RequireAllError(ToolchainError):
    exit_code = EXIT_GATE_FAILED  # a release that must hold every target does not


def onnx_signature(path) -> dict:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}

    def describe(v):
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": _ONNX_TYPES.get(v.type.tensor_type.elem_type, "other")}
    return {"inputs": [describe(v) for v in graph.input if v.name not in init],
            "outputs": [describe(v) for v in graph.output]}


UNFINISHED = ("stale", "error")  # report statuses of builds that did not finish: refused unless --allow-failed


def _unfinished(report) -> bool:
    """A build that did not finish, or whose shared stages failed (no target was built)."""
    return report.get("status") in UNFINISHED or (report.get("status") == "stage-failed"
                                                   and not report.get("reference"))


def package(build_dir, version, dist, allow_failed=False, require_all=False, signer=None) -> dict:
    build_dir, dist = Path(build_dir), Path(dist)
    reports = sorted(build_dir.glob("*/report.json"))
    if not reports:
        raise ToolchainError(f"{build_dir}: no report.json under it (run toolchain build first)")
    loaded = [(rp, _read_report(rp)) for rp in reports]
    _check_finished(loaded, allow_failed)
    if require_all:
        _check_all_passed(loaded)
    _check_dist(build_dir, dist)
    debris.reclaim(dist.parent, (".package",))  # staging folders of killed runs
    staging = dist.parent / debris.owned_name(".package")
    staging.mkdir()  # default permissions (umask), not mkdtemp's 0700: the bundle is for others to read
    manifest = {"format_version": 1, "release_version": version, "toolchain_version": __version__,
                "artifacts": [], "excluded": [], "models": {}}
    try:
        for rp, report in loaded:
            model_dir = rp.parent
            model = report["model"]
            manifest["models"][model] = {"version": report.get("version"), "reference": report.get("reference"),
                                         "status": report.get("status"),
                                         "provenance": model_provenance(report.get("provenance")),
                                         "fp32_onnx_sha256": (report.get("fp32_onnx") or {}).get("sha256")}
            for name, t in sorted(report.get("targets", {}).items()):
                ok = (t["status"] == "passed" and not _unfinished(report)) or \
                    (allow_failed and "artifact" in t)
                if not ok or "artifact" not in t:
                    manifest["excluded"].append({"model": model, "target": name, "status": t["status"],
                                                 "reason": t.get("reason") or f"status {t['status']}"})
                    continue
                src = model_dir / t["artifact"]
                if sha256_file(src) != t["sha256"]:
                    raise ToolchainError(f"{src}: differs from the sha256 in {rp}; rebuild before packaging")
                rel = Path(model) / name / src.name
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, staging / rel)
                companions = []  # the other files of a several-file format (formats.FORMATS): OpenVINO's .bin
                for c in t.get("companions", []):
                    f = model_dir / c["path"]
                    if sha256_file(f) != c["sha256"]:
                        raise ToolchainError(f"{f}: differs from the sha256 in {rp}; rebuild before packaging")
                    shutil.copyfile(f, staging / rel.parent / f.name)
                    companions.append({"path": (rel.parent / f.name).as_posix(), "sha256": c["sha256"],
                                       "size_bytes": c["size_bytes"]})
                signature = formats.signature(t["format"], src, t)
                manifest["artifacts"].append({
                    "path": rel.as_posix(), "sha256": t["sha256"], "size_bytes": t["size_bytes"], "model": model,
                    "model_version": report.get("version"), "target": name, "format": t["format"],
                    "precision": t["precision"], "runtime": t["runtime"], "status": t["status"],
                    "signature": signature,
                    **({"companions": companions} if companions else {}),
                    "validation": {k: t.get(k) for k in ("metric", "metric_drop", "max_metric_drop", "outputs",
                                                          "agreement",
                                                          "latency_ms", "baseline_latency_ms", "latency_ratio",
                                                          "latency_protocol", "device", "host", "notes",
                                                          "reason")},
                    "runtime_options": t.get("runtime_options"),
                    "reproducible": _reproducible(t),
                    "build": t.get("build", {}),
                })
        write_json_atomic(staging / MANIFEST, manifest)
        sums = "".join(f"{f['sha256']}  {f['path']}\n" for f in _files(manifest["artifacts"]))
        (staging / SUMS).write_text(sums)
        write_provenance(staging, manifest, (MANIFEST, SUMS), signer)  # in-toto statement, DSSE-signed with a key
        if dist.exists():
            shutil.rmtree(dist)
        os.rename(staging, dist)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _tar_reproducibly(dist, dist.with_name(dist.name + ".tar.gz"))
    return manifest


def _read_report(rp: Path) -> dict:
    """A report.json as package needs it, or one line naming the file."""
    try:
        report = json.loads(rp.read_text())
    except (OSError, ValueError) as e:
        raise ToolchainError(f"{rp}: not a readable report ({type(e).__name__}: {e}); rebuild this model") from None
    targets = report.get("targets") if isinstance(report, dict) else None
    if not isinstance(targets, dict) or not isinstance(report.get("model"), str) or not all(
            isinstance(t, dict) and isinstance(t.get("status"), str) for t in targets.values()):
        raise ToolchainError(f"{rp}: not a build report (no model, or targets without a status); rebuild this model")
    return report


def _check_finished(loaded, allow_failed):
    """A report of a build that did not finish (killed, interrupted, failed on its inputs or a bug) is refused."""
    if allow_failed:
        return
    for rp, report in loaded:
        if _unfinished(report):
            what = "did not finish" if report.get("status") == "stale" else "failed"
            raise ToolchainError(f"{rp}: the last build of {report['model']} {what} ({report['status']}: "
                                 f"{report.get('reason') or 'no reason recorded'}); rebuild it, or pass "
                                 "--allow-failed to bundle the rest with this model marked")


def _check_all_passed(loaded):
    """--require-all: every target each spec asks for is in the report and passed."""
    problems = []
    for rp, report in loaded:
        names = report.get("spec_targets") or sorted(report["targets"])
        for name in names:
            t = report["targets"].get(name)
            if t is None:
                problems.append(f"{report['model']} {name} (missing: not built)")
            elif t["status"] != "passed" or _unfinished(report):
                why = " ".join(str(t.get("reason") or "").split())[:160]
                problems.append(f"{report['model']} {name} ({t['status']}{': ' + why if why else ''})")
    if problems:
        raise RequireAllError(f"--require-all: {len(problems)} target(s) not passed: " + "; ".join(problems))


def _check_dist(build_dir: Path, dist: Path):
    """-o must be a new or bundle directory outside the build directory, and its parent is created."""
    b, d = build_dir.resolve(), dist.resolve()
    if d == b or b in d.parents:
        raise ToolchainError(f"-o {dist}: is inside the build directory {build_dir}; packaging there would replace "
                             "the build (name a directory outside it)")
    if d in b.parents:
        raise ToolchainError(f"-o {dist}: holds the build directory {build_dir}; packaging there would delete it")
    if dist.exists() or dist.is_symlink():
        if not dist.is_dir() or dist.is_symlink():
            raise ToolchainError(f"-o {dist}: exists and is not a directory (name a new bundle directory)")
        if any(dist.iterdir()) and not (dist / MANIFEST).is_file():
            raise ToolchainError(f"-o {dist}: exists and is not a release bundle (no {MANIFEST}); refusing to "
                                 "replace it")
    tarball = dist.with_name(dist.name + ".tar.gz")
    if tarball.exists() and not tarball.is_file():
        raise ToolchainError(f"-o {dist}: {tarball} exists and is not a file")
    try:
        dist.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ToolchainError(f"-o {dist}: cannot create {dist.parent} ({e.strerror or e})") from None


def _reproducible(t) -> dict:
    """Whether a clean rebuild on the same machine gives the same bytes (tests prove it for the fixed schemes)."""
    plan = (t.get("build") or {}).get("plan")
    if plan and any("kept float" in s for s in plan.get("steps", [])):
        return {"same_bytes_on_rebuild": False,
                "why": "the precision plan's speed decisions were measured on the build host; timing noise or "
                       "another CPU can choose differently (set quantize.speed_search = false for a plan decided "
                       "by accuracy alone)"}
    return {"same_bytes_on_rebuild": True, "why": "fixed converter settings, seeded calibration order"}


def _tar_reproducibly(src: Path, out: Path):
    """Same inputs, same bytes: sorted members, zero times and owners, fixed modes, gzip without a timestamp."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(src.rglob("*")):
            if not p.is_file():
                continue
            info = tarfile.TarInfo(f"{src.name}/{p.relative_to(src).as_posix()}")
            info.size, info.mtime, info.mode = p.stat().st_size, 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(p, "rb") as f:
                tar.addfile(info, f)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(buf.getvalue())
    os.replace(tmp, out)


def safe_extract(archive: Path, dest: Path) -> Path:
    """Unpack a bundle, refusing members that escape dest: absolute paths, '..', links and devices."""
    dest = dest.resolve()
    try:
        return _extract(archive, dest)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise VerifyError(f"{archive}: not a readable bundle archive ({type(e).__name__}: {e})") from None


def _extract(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            target = (dest / m.name).resolve()
            if os.path.isabs(m.name) or ".." in Path(m.name).parts or not str(target).startswith(str(dest) + os.sep):
                raise VerifyError(f"{archive}: member {m.name!r} escapes the bundle directory; refused")
            if not (m.isfile() or m.isdir()):
                raise VerifyError(f"{archive}: member {m.name!r} is a link or special file; refused")
        tar.extractall(dest, members=members, filter="data")
    tops = {Path(m.name).parts[0] for m in members}
    if len(tops) != 1:
        raise VerifyError(f"{archive}: expected one top-level bundle directory, found {len(tops)}")
    return dest / tops.pop()


def verify(dist) -> dict:
    dist = Path(dist)
    if dist.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            return verify_dir(safe_extract(dist, Path(tmp)), label=dist)
    return verify_dir(dist, label=dist)


ARTIFACT_FIELDS = {"path": str, "sha256": str, "size_bytes": int}  # what verify reads from each entry


def _check_manifest_types(artifacts, label):
    """A manifest whose fields have the wrong types is a bundle that does not match (exit 5), never a crash."""
    if not isinstance(artifacts, list):
        raise VerifyError(f"{label}: {MANIFEST}: artifacts must be a list, got {type(artifacts).__name__}")
    for i, a in enumerate(artifacts):
        if not isinstance(a, dict):
            raise VerifyError(f"{label}: {MANIFEST}: artifacts[{i}] must be an object, got {type(a).__name__}")
        for key, want in ARTIFACT_FIELDS.items():
            v = a.get(key)
            if not isinstance(v, want) or isinstance(v, bool):
                raise VerifyError(f"{label}: {MANIFEST}: artifacts[{i}].{key} must be {want.__name__}, got "
                                  f"{type(v).__name__} {v!r:.80}")
        if not a["path"] or "\0" in a["path"]:
            raise VerifyError(f"{label}: {MANIFEST}: artifacts[{i}].path is not a usable path: {a['path']!r:.80}")
        if "companions" in a:
            _check_manifest_types(a["companions"], f"{label}: artifacts[{i}].companions")


def _files(artifacts) -> list:
    """Every file the manifest lists: each artifact's main file and its companions (formats.FORMATS)."""
    return [f for a in artifacts for f in (a, *(a.get("companions") or []))]


def verify_dir(root: Path, label) -> dict:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        artifacts = manifest["artifacts"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VerifyError(f"{root / MANIFEST}: missing or unreadable manifest ({e})") from None
    _check_manifest_types(artifacts, label)
    listed = set()
    for a in _files(artifacts):
        p = root / a["path"]
        if ".." in Path(a["path"]).parts or Path(a["path"]).is_absolute():
            raise VerifyError(f"{label}: manifest path {a['path']!r} escapes the bundle")
        if not p.is_file():
            raise VerifyError(f"{label}: {a['path']}: listed in the manifest but missing")
        if p.stat().st_size != a["size_bytes"]:
            raise VerifyError(f"{label}: {a['path']}: size {p.stat().st_size} != manifest {a['size_bytes']}")
        if sha256_file(p) != a["sha256"]:
            raise VerifyError(f"{label}: {a['path']}: sha256 does not match the manifest (file altered)")
        listed.add(a["path"])
    sums = {}
    try:
        for line in (root / SUMS).read_text().splitlines():
            digest, _, path = line.partition("  ")
            sums[path] = digest
    except OSError:
        raise VerifyError(f"{label}: {SUMS} missing") from None
    if sums != {a["path"]: a["sha256"] for a in _files(artifacts)}:
        raise VerifyError(f"{label}: {SUMS} disagrees with {MANIFEST}")
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink() or (p.is_file() and rel not in listed and rel not in (MANIFEST, SUMS, *PROVENANCE_FILES)):
            raise VerifyError(f"{label}: {rel}: not listed in the manifest")
    return manifest
