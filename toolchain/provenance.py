"""Who built a release bundle, from what: an in-toto Statement (v1) with a SLSA provenance (v1) predicate whose
subjects are every file of the bundle with its sha256, optionally signed as a DSSE envelope (signing.py).

`verify --key` checks, in this order: the signature with the trusted key, every subject digest (and that no file
of the bundle is outside the signed set), then the manifest (package.verify_dir). A bundle whose files, manifest
and checksums were rewritten consistently therefore fails unless it was re-signed with the trusted key.
Paths in the statement are relative: nothing of the build machine's file system leaks into a release.
No timestamps either: the same inputs and key give the same bytes (ed25519 is deterministic)."""

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

from . import __version__
from .digest import sha256_file
from .errors import ToolchainError

STATEMENT = "provenance.intoto.json"
ENVELOPE = "provenance.dsse.json"
FILES = (STATEMENT, ENVELOPE)
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"  # DSSE payloadType of an in-toto statement
BUILD_TYPE = "urn:toolchain:package:v1"
BUILDER_ID = "urn:toolchain:package"
_GATE_KEYS = ("metric", "metric_drop", "max_metric_drop", "latency_ms", "baseline_latency_ms", "latency_ratio",
              "device", "reason")


# ---- what the manifest records about a model's inputs ---------------------------------------------------------------
def model_provenance(prov):
    """A report's provenance as a bundle records it: the spec named relative to its git checkout (with the
    revision) or by its file name, never by an absolute path of the build machine."""
    if not prov or not prov.get("spec"):
        return prov
    out = dict(prov)
    source = source_revision(Path(prov["spec"]), prov.get("spec_sha256"))
    out["spec"] = source["spec_path"] if source else Path(prov["spec"]).name
    if source:
        out["source"] = source
    return out


def _git(cwd, *args) -> bytes:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, check=True, timeout=30).stdout


def source_revision(spec: Path, spec_sha256=None):
    """{"commit", "spec_path", "spec_at_commit", "dirty"} when the spec lives in a git checkout, else None.
    spec_at_commit: the spec that was built is byte for byte the one committed at that revision."""
    try:
        spec = spec.resolve()
        top = Path(_git(spec.parent, "rev-parse", "--show-toplevel").decode().strip()).resolve()
        commit = _git(top, "rev-parse", "HEAD").decode().strip()
        rel = spec.relative_to(top).as_posix()
        dirty = bool(_git(top, "status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, ValueError, subprocess.SubprocessError):  # no git, not a checkout, no commit yet
        return None
    try:
        committed = hashlib.sha256(_git(top, "show", f"HEAD:{rel}")).hexdigest()
    except (OSError, subprocess.SubprocessError):  # the spec is not committed
        committed = None
    return {"commit": commit, "spec_path": rel, "spec_at_commit": committed is not None and committed == spec_sha256,
            "dirty": dirty}


# ---- the statement ----------------------------------------------------------------------------------------------
def statement(root: Path, manifest: dict, meta_files) -> dict:
    """The in-toto statement of the bundle in root: every artifact and each meta file is a subject."""
    subjects = [{"name": f["path"], "digest": {"sha256": f["sha256"]}} for a in manifest["artifacts"]
                for f in (a, *(a.get("companions") or []))]  # an artifact's companion files (OpenVINO's .bin)
    subjects += [{"name": m, "digest": {"sha256": sha256_file(root / m)}} for m in meta_files]
    deps, libraries, models, byproducts = [], {}, {}, []
    for name, m in sorted(manifest["models"].items()):
        prov = m.get("provenance") or {}
        models[name] = {"version": m.get("version"), "spec": prov.get("spec")}
        for key, what in (("spec_sha256", "spec"), ("weights_sha256", "weights"),
                          ("calibration_sha256", "calibration"), ("evaluation_sha256", "evaluation"),
                          ("model_digest", "model code, arguments and weights")):
            if prov.get(key):
                deps.append({"name": f"{name}: {what}", "digest": {"sha256": prov[key]}})
        if prov.get("source"):
            s = prov["source"]
            deps.append({"name": f"{name}: source", "digest": {"gitCommit": s["commit"]},
                         "annotations": {k: s[k] for k in ("spec_path", "spec_at_commit", "dirty")}})
        for lib, version in (prov.get("libraries") or {}).items():
            if version != "not-installed":
                libraries.setdefault(f"pkg:pypi/{lib}@{version}", lib)
        byproducts.append({"name": f"{name}: report", "annotations": {"status": m.get("status")}})
    deps += [{"name": lib, "uri": uri} for uri, lib in sorted(libraries.items())]
    for a in manifest["artifacts"]:
        byproducts.append({"name": f"{a['model']}: {a['target']}", "digest": {"sha256": a["sha256"]},
                           "annotations": {"status": a["status"], "path": a["path"], "format": a["format"],
                                           "precision": a["precision"], "runtime": a["runtime"],
                                           **{k: a["validation"].get(k) for k in _GATE_KEYS}}})
    for x in manifest["excluded"]:
        byproducts.append({"name": f"{x['model']}: {x['target']}",
                           "annotations": {"status": x["status"], "reason": x["reason"], "excluded": True}})
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {"release_version": manifest["release_version"], "models": models},
            "internalParameters": {"manifest_format_version": manifest["format_version"]},
            "resolvedDependencies": deps,
        },
        "runDetails": {"builder": {"id": BUILDER_ID, "version": {"toolchain": __version__}},
                       "byproducts": byproducts},
    }
    return {"_type": STATEMENT_TYPE, "subject": subjects, "predicateType": PREDICATE_TYPE, "predicate": predicate}


def _encode(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write(root: Path, manifest: dict, meta_files, signer=None):
    """Write the statement into the bundle directory root and, with a signer, its DSSE envelope."""
    from .cache import atomic_write

    payload = _encode(statement(root, manifest, meta_files))
    atomic_write(root / STATEMENT, payload)
    if signer is not None:
        from .signing import sign

        atomic_write(root / ENVELOPE, _encode(sign(payload, PAYLOAD_TYPE, signer)))


# ---- checking ---------------------------------------------------------------------------------------------------
def _verify_error(message):
    from .bundle import VerifyError

    return VerifyError(message)


def _load_json(path: Path, label):
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise _verify_error(f"{label}: {path.name}: unreadable ({type(e).__name__})") from None


def check(root: Path, label, key=None) -> dict:
    """Signature (when key is given), then every subject. Returns what was found:
    {"statement": bool, "signed": bool, "signature_checked": bool, "keyids": [...]}."""
    st_path, env_path = root / STATEMENT, root / ENVELOPE
    envelope = _load_json(env_path, label) if env_path.is_file() else None
    sigs = envelope.get("signatures") if isinstance(envelope, dict) else None
    keyids = [str(s.get("keyid")) for s in sigs if isinstance(s, dict)] if isinstance(sigs, list) else []
    if key is not None:
        from .signing import SignatureError, open_envelope

        if envelope is None:
            raise SignatureError(f"{label}: unsigned bundle (no {ENVELOPE}); --key needs a signed one")
        payload = open_envelope(envelope, key, PAYLOAD_TYPE, f"{label}: {ENVELOPE}")
        if st_path.is_file() and st_path.read_bytes() != payload:
            raise _verify_error(f"{label}: {STATEMENT} differs from the signed statement")
    elif st_path.is_file():
        payload = st_path.read_bytes()
    else:
        return {"statement": False, "signed": envelope is not None, "signature_checked": False, "keyids": keyids,
                "trusted_keyid": None}
    try:
        stmt = json.loads(payload)
    except ValueError:
        raise _verify_error(f"{label}: {STATEMENT}: not JSON") from None
    _check_subjects(root, stmt, label)
    return {"statement": True, "signed": envelope is not None, "signature_checked": key is not None,
            "keyids": keyids, "trusted_keyid": key.keyid if key is not None else None}


def _check_subjects(root: Path, stmt, label):
    if not isinstance(stmt, dict) or stmt.get("_type") != STATEMENT_TYPE or stmt.get("predicateType") != PREDICATE_TYPE:
        raise _verify_error(f"{label}: {STATEMENT}: not an in-toto statement with a SLSA provenance predicate")
    covered = set()
    for s in stmt.get("subject") or []:
        try:
            name, digest = s["name"], s["digest"]["sha256"]
        except (KeyError, TypeError):
            raise _verify_error(f"{label}: {STATEMENT}: malformed subject {s!r}") from None
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise _verify_error(f"{label}: {STATEMENT}: subject {name!r} escapes the bundle")
        p = root / name
        if not p.is_file():
            raise _verify_error(f"{label}: {name}: named in the provenance but missing")
        if sha256_file(p) != digest:
            raise _verify_error(f"{label}: {name}: sha256 does not match the provenance (file altered)")
        covered.add(name)
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if (p.is_file() or p.is_symlink()) and rel not in covered and rel not in FILES:
            raise _verify_error(f"{label}: {rel}: not covered by the provenance")


def verify_root(root: Path, label, key=None):
    """(manifest, provenance summary) of an unpacked bundle. With a key: the signature, then every subject digest,
    then the manifest; without one the manifest's own checks come first (they name what is wrong more precisely)
    and the provenance digests after."""
    from .bundle import verify_dir

    if key is not None:
        summary = check(root, label, key)
        return verify_dir(root, label=label), summary
    manifest = verify_dir(root, label=label)
    return manifest, check(root, label)


def verify_bundle(dist, key=None):
    """verify_root of a bundle directory or .tar.gz (unpacked safely into a temporary directory)."""
    from .bundle import safe_extract

    dist = Path(dist)
    if dist.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            return verify_root(safe_extract(dist, Path(tmp)), dist, key)
    if not dist.is_dir():
        raise ToolchainError(f"{dist}: no such bundle (a directory or .tar.gz)")
    return verify_root(dist, dist, key)


def describe(summary, key_path=None) -> str:
    """One line for the user about the signature."""
    if summary["signature_checked"]:
        return f"signature: OK, ed25519 key {summary['trusted_keyid'][:16]} ({key_path})"
    if summary["signed"]:
        return "signature: present but NOT checked (pass --key PUBLIC_KEY to check it)"
    if summary["statement"]:
        return "signature: none (unsigned bundle; provenance digests checked)"
    return "signature: none (unsigned bundle without provenance)"
