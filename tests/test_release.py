"""Release pipelines: signed provenance in the bundle, and publishing bundles to a real OCI registry.

The registry is Debian's `docker-registry` (CNCF distribution), started by a fixture on 127.0.0.1 and stopped by its
own PID; `make system-deps` (a dependency of `make test`) installs it. The bundle comes from a real build of the tiny
CNN whose spec lives in a git checkout, signed with a key made by `toolchain keygen`."""

import base64
import hashlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from conftest import run_build

HTPASSWD_USER, HTPASSWD_PASS = "ci", "release-pass"
# bcrypt (cost 4) of HTPASSWD_PASS, made once with Python's crypt module; the registry accepts only bcrypt.
HTPASSWD_HASH = "$2b$04$Io5LcJFLiDitQk4niZ0bseuJiuOpHyu3rsoyOOXeod9qhjTd7HQ6q"


def cli(*args):
    from toolchain.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result.stdout


def one_error_line(result, code) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git(cwd, *args) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env).stdout


# ---- a signed bundle from a build whose spec is committed ---------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    out = ok(cli("keygen", "-o", d / "release"))
    assert "release.key" in out and "release.pub" in out and "BEGIN" not in out  # never prints the key itself
    ok(cli("keygen", "-o", d / "attacker"))
    return {"key": d / "release.key", "pub": d / "release.pub",
            "other_key": d / "attacker.key", "other_pub": d / "attacker.pub"}


@pytest.fixture(scope="module")
def release_build(tmp_path_factory, write_spec):
    repo = tmp_path_factory.mktemp("release repo")
    spec = write_spec(repo / "models" / "tiny", targets={"x86_64": {"max_metric_drop": 25.0,
                                                                    "latency": {"warmup": 2, "runs": 10}}})
    git(repo, "init", "-q")
    git(repo, "add", "models/tiny/build.toml")
    git(repo, "commit", "-q", "-m", "spec")
    b = run_build(spec, repo / "build")
    assert b.code == 0 and b.report["targets"]["x86_64"]["status"] == "passed"
    b.commit = git(repo, "rev-parse", "HEAD").strip()
    b.spec = spec
    return b


@pytest.fixture(scope="module")
def signed(release_build, keys, tmp_path_factory):
    dist = tmp_path_factory.mktemp("signed") / "models-1.2.0"
    out = ok(cli("package", release_build.out, "--version", "1.2.0", "-o", dist, "--sign-key", keys["key"]))
    assert "provenance: signed with" in out
    return dist


@pytest.fixture(scope="module")
def unsigned(release_build, tmp_path_factory):
    dist = tmp_path_factory.mktemp("unsigned") / "models-1.2.0"
    assert "provenance: unsigned" in ok(cli("package", release_build.out, "--version", "1.2.0", "-o", dist))
    return dist


def tarball(dist: Path) -> Path:
    return dist.with_name(dist.name + ".tar.gz")


def copy(dist: Path, tmp_path) -> Path:
    out = tmp_path / "copy" / dist.name
    shutil.copytree(dist, out)
    return out


def statement(dist: Path) -> dict:
    return json.loads((dist / "provenance.intoto.json").read_text())


# ---- keys and signing ---------------------------------------------------------------------------------------------
def test_keygen_writes_a_private_key_only_the_owner_reads_and_never_overwrites(keys):
    assert keys["key"].stat().st_mode & 0o777 == 0o600
    assert keys["key"].read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert keys["pub"].read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = keys["key"].read_bytes()
    line = one_error_line(cli("keygen", "-o", keys["key"].with_suffix("")), 2)
    assert "already exists" in line and keys["key"].read_bytes() == before


def test_signed_bundle_verifies_with_the_trusted_key(signed, keys):
    for target in (signed, tarball(signed)):
        lines = ok(cli("verify", target, "--key", keys["pub"])).splitlines()
        assert lines[0] == f"{target}: OK, 1 artifacts verified"
        assert lines[1].startswith("signature: OK, ed25519 key"), lines
    lines = ok(cli("verify", signed)).splitlines()  # no key: integrity only, and it says so
    assert "NOT checked" in lines[1]


def test_provenance_is_an_in_toto_slsa_statement_over_every_file(signed, release_build):
    st = statement(signed)
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    files = sorted(p.relative_to(signed).as_posix() for p in signed.rglob("*") if p.is_file())
    signed_meta = {"provenance.intoto.json", "provenance.dsse.json"}
    assert sorted(s["name"] for s in st["subject"]) == sorted(set(files) - signed_meta)
    for s in st["subject"]:
        assert s["digest"]["sha256"] == sha256(signed / s["name"]), s["name"]
    pred = st["predicate"]
    assert pred["runDetails"]["builder"]["version"]["toolchain"] == "0.1.0"
    deps = {d["name"]: d for d in pred["buildDefinition"]["resolvedDependencies"]}
    prov = release_build.report["provenance"]
    assert deps["tiny_cnn: spec"]["digest"]["sha256"] == prov["spec_sha256"] == sha256(release_build.spec)
    for what in ("weights", "calibration", "evaluation"):
        assert deps[f"tiny_cnn: {what}"]["digest"]["sha256"] == prov[f"{what}_sha256"], what
    source = deps["tiny_cnn: source"]
    assert source["digest"] == {"gitCommit": release_build.commit}
    assert source["annotations"] == {"spec_path": "models/tiny/build.toml", "spec_at_commit": True, "dirty": False}
    ort_version = release_build.report["provenance"]["libraries"]["onnxruntime"]
    assert {"uri": f"pkg:pypi/onnxruntime@{ort_version}", "name": "onnxruntime"} in deps.values()
    assert pred["buildDefinition"]["externalParameters"]["release_version"] == "1.2.0"
    verdicts = {b["name"]: b for b in pred["runDetails"]["byproducts"]}
    x86 = verdicts["tiny_cnn: x86_64"]["annotations"]
    t = release_build.report["targets"]["x86_64"]
    assert (x86["status"], x86["metric"], x86["max_metric_drop"]) == ("passed", t["metric"], 25.0)
    assert x86["latency_ms"]["p50"] > 0
    assert verdicts["tiny_cnn: report"]["annotations"]["status"] == "passed"


def test_no_absolute_path_of_the_build_machine_in_the_bundle(signed, release_build):
    manifest = json.loads((signed / "manifest.json").read_text())
    assert manifest["models"]["tiny_cnn"]["provenance"]["spec"] == "models/tiny/build.toml"
    envelope = json.loads((signed / "provenance.dsse.json").read_text())
    texts = {n: (signed / n).read_text() for n in ("manifest.json", "provenance.intoto.json", "SHA256SUMS")}
    texts["payload"] = base64.b64decode(envelope["payload"]).decode()
    machine_roots = {str(release_build.out.parent), str(Path(release_build.out.parent).resolve()), str(Path.home())}
    for name, text in texts.items():
        for root in machine_roots:
            assert root not in text, (name, root)


def test_source_revision_says_when_the_spec_is_not_the_committed_one(release_build, tmp_path):
    from toolchain.provenance import source_revision

    spec = release_build.spec
    here = source_revision(spec, sha256(spec))
    assert here == {"commit": release_build.commit, "spec_path": "models/tiny/build.toml", "spec_at_commit": True,
                    "dirty": False}
    assert source_revision(spec, "0" * 64)["spec_at_commit"] is False  # the build used another spec
    outside = tmp_path / "build.toml"
    outside.write_text("x")
    assert source_revision(outside, sha256(outside)) is None  # not a checkout: no revision claimed


def test_signed_bundle_is_reproducible(release_build, signed, keys, tmp_path):
    again = tmp_path / signed.name
    ok(cli("package", release_build.out, "--version", "1.2.0", "-o", again, "--sign-key", keys["key"]))
    assert tarball(again).read_bytes() == tarball(signed).read_bytes()  # no timestamp; ed25519 is deterministic


def rewrite_consistently(dist: Path):
    """What someone who can write the bundle but does not hold the key can do: swap an artifact and fix every
    checksum, the manifest and the provenance statement to match."""
    art = dist / "tiny_cnn" / "x86_64" / "tiny_cnn.int8.onnx"
    art.write_bytes(art.read_bytes() + b"\0backdoor")
    m = json.loads((dist / "manifest.json").read_text())
    m["artifacts"][0].update(sha256=sha256(art), size_bytes=art.stat().st_size)
    (dist / "manifest.json").write_text(json.dumps(m))
    (dist / "SHA256SUMS").write_text("".join(f"{a['sha256']}  {a['path']}\n" for a in m["artifacts"]))
    st = statement(dist)
    for s in st["subject"]:
        s["digest"]["sha256"] = sha256(dist / s["name"])
    (dist / "provenance.intoto.json").write_text(json.dumps(st, indent=2, sort_keys=True) + "\n")
    return st


def test_consistently_rewritten_bundle_fails_verify_key(signed, keys, tmp_path):
    dist = copy(signed, tmp_path)
    st = rewrite_consistently(dist)
    assert "NOT checked" in ok(cli("verify", dist))  # integrity alone cannot tell
    line = one_error_line(cli("verify", dist, "--key", keys["pub"]), 5)
    assert "differs from the signed statement" in line, line
    # ... and putting the rewritten statement into the envelope breaks the signature
    env_path = dist / "provenance.dsse.json"
    env = json.loads(env_path.read_text())
    env["payload"] = base64.b64encode((json.dumps(st, indent=2, sort_keys=True) + "\n").encode()).decode()
    env_path.write_text(json.dumps(env))
    line = one_error_line(cli("verify", dist, "--key", keys["pub"]), 5)
    assert "signature does not verify with the trusted key" in line, line


def test_bundle_re_signed_with_another_key_is_refused(signed, keys, tmp_path):
    from toolchain.provenance import write
    from toolchain.signing import load_signer

    dist = copy(signed, tmp_path)
    rewrite_consistently(dist)
    write(dist, json.loads((dist / "manifest.json").read_text()), ("manifest.json", "SHA256SUMS"),
          load_signer(keys["other_key"]))
    assert "signature: OK" in ok(cli("verify", dist, "--key", keys["other_pub"]))  # valid, by the wrong key
    line = one_error_line(cli("verify", dist, "--key", keys["pub"]), 5)
    assert "does not verify with the trusted key" in line and "not trusted" in line


def test_wrong_key_fails(signed, keys):
    line = one_error_line(cli("verify", tarball(signed), "--key", keys["other_pub"]), 5)
    assert "signature does not verify" in line


def test_unsigned_bundle_verifies_its_integrity_and_says_so(unsigned, keys, tmp_path):
    lines = ok(cli("verify", unsigned)).splitlines()
    assert lines[1] == "signature: none (unsigned bundle; provenance digests checked)"
    line = one_error_line(cli("verify", unsigned, "--key", keys["pub"]), 5)
    assert "unsigned bundle" in line
    dist = copy(unsigned, tmp_path)  # the statement still guards integrity: an altered subject is named
    st = statement(dist)
    st["subject"][0]["digest"]["sha256"] = "0" * 64
    (dist / "provenance.intoto.json").write_text(json.dumps(st))
    assert "does not match the provenance" in one_error_line(cli("verify", dist), 5)


@pytest.mark.parametrize("bad", ["not a key", "public key", "missing"])
def test_bad_signing_key_is_one_line_and_writes_nothing(bad, release_build, keys, tmp_path):
    key = {"public key": keys["pub"], "missing": tmp_path / "nope.key"}.get(bad, tmp_path / "junk.key")
    if bad == "not a key":
        key.write_text("hello\n")
    dist = tmp_path / "dist"
    line = one_error_line(cli("package", release_build.out, "--version", "1", "-o", dist, "--sign-key", key), 2)
    assert str(key) in line
    assert not dist.exists() and not tarball(dist).exists()


# ---- the registry -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(d: Path, htpasswd=None, readonly=False):
    exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(exe).exists():
        pytest.fail("docker-registry is not installed: `make system-deps` installs it (Debian package docker-registry)")
    port = free_port()
    config = [
        "version: 0.1", "log:", "  level: error", "storage:", "  filesystem:", f"    rootdirectory: {d / 'data'}",
        *(["  maintenance:", "    readonly:", "      enabled: true"] if readonly else []),
        "http:", f"  addr: 127.0.0.1:{port}",
    ]
    if htpasswd:
        (d / "htpasswd").write_text(htpasswd)
        config += ["auth:", "  htpasswd:", "    realm: test", f"    path: {d / 'htpasswd'}"]
    (d / "config.yml").write_text("\n".join(config) + "\n")
    log = open(d / "registry.log", "wb")
    proc = subprocess.Popen([exe, "serve", str(d / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code in (200, 401):
                break
        except requests.exceptions.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"docker-registry did not start: {(d / 'registry.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port}", log


def stop(proc, log):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    proc, host, log = start_registry(tmp_path_factory.mktemp("registry"))
    yield host
    stop(proc, log)


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    proc, host, log = start_registry(tmp_path_factory.mktemp("auth registry"), f"{HTPASSWD_USER}:{HTPASSWD_HASH}\n")
    yield host
    stop(proc, log)


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch, tmp_path):
    """The developer's own docker login must not leak into (or out of) these tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("DOCKER_CONFIG", "ORAS_USER", "ORAS_PASS"):
        monkeypatch.delenv(var, raising=False)


def oci_manifest(host, repo, tag) -> dict:
    r = requests.get(f"http://{host}/v2/{repo}/manifests/{tag}", timeout=10,
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return r.json() if r.status_code == 200 else None


def test_publish_then_pull_into_a_clean_directory_and_verify(registry, signed, keys, release_build, tmp_path):
    ref = f"oci://{registry}/models/tiny:1.2.0"
    out = ok(cli("publish", tarball(signed), ref, "--key", keys["pub"]))
    assert out.startswith(f"{ref}: pushed 5 layers, manifest sha256:") and "signature: OK" in out
    m = oci_manifest(registry, "models/tiny", "1.2.0")
    assert m["config"]["mediaType"] == "application/vnd.toolchain.bundle.v1+json"
    layers = {x["annotations"]["org.opencontainers.image.title"]: x for x in m["layers"]}
    assert set(layers) == {"tiny_cnn/x86_64/tiny_cnn.int8.onnx", "manifest.json", "SHA256SUMS",
                           "provenance.intoto.json", "provenance.dsse.json"}
    art = layers["tiny_cnn/x86_64/tiny_cnn.int8.onnx"]
    assert art["mediaType"] == "application/vnd.toolchain.model.onnx"
    assert art["digest"] == "sha256:" + sha256(signed / "tiny_cnn/x86_64/tiny_cnn.int8.onnx")
    assert art["annotations"]["toolchain.target"] == "x86_64"
    assert layers["provenance.intoto.json"]["mediaType"] == "application/vnd.in-toto+json"
    assert layers["provenance.dsse.json"]["mediaType"] == "application/vnd.dsse.envelope.v1+json"
    a = m["annotations"]
    assert (a["org.opencontainers.image.version"], a["toolchain.models"], a["toolchain.targets"]) == (
        "1.2.0", "tiny_cnn@1.0.0", "x86_64")
    assert a["org.opencontainers.image.revision"] == release_build.commit and a["toolchain.signed"] == "true"

    clean = tmp_path / "pulled"
    lines = ok(cli("verify", ref, "--key", keys["pub"], "-o", clean)).splitlines()
    assert lines == [f"{ref}: OK, 1 artifacts verified", lines[1]] and lines[1].startswith("signature: OK")
    pulled = sorted(p.relative_to(clean).as_posix() for p in clean.rglob("*") if p.is_file())
    assert pulled == sorted(layers)
    for name in pulled:
        assert (clean / name).read_bytes() == (signed / name).read_bytes(), name
    line = one_error_line(cli("verify", ref, "--key", keys["other_pub"]), 5)  # a wrong key fails, pulled too
    assert "signature does not verify" in line


def test_same_tag_same_content_is_a_no_op_other_content_needs_force(registry, release_build, keys, tmp_path):
    ref = f"oci://{registry}/models/tiny:stable"
    first, second = tmp_path / "models-1.2.0", tmp_path / "models-1.2.1"
    ok(cli("package", release_build.out, "--version", "1.2.0", "-o", first, "--sign-key", keys["key"]))
    ok(cli("package", release_build.out, "--version", "1.2.1", "-o", second, "--sign-key", keys["key"]))
    assert "pushed" in ok(cli("publish", first, ref))
    digest = oci_manifest(registry, "models/tiny", "stable")
    assert "already holds this bundle" in ok(cli("publish", tarball(first), ref))
    line = one_error_line(cli("publish", second, ref), 12)
    assert "already holds other content" in line and "--force" in line
    assert oci_manifest(registry, "models/tiny", "stable") == digest  # untouched
    assert "pushed" in ok(cli("publish", second, ref, "--force"))
    assert oci_manifest(registry, "models/tiny", "stable")["annotations"]["org.opencontainers.image.version"] == "1.2.1"
    ok(cli("verify", ref, "--key", keys["pub"]))


def test_rewritten_bundle_is_refused_by_publish_and_by_verify_after_a_pull(registry, signed, keys, tmp_path):
    dist = copy(signed, tmp_path)
    rewrite_consistently(dist)
    ref = f"oci://{registry}/models/tampered:1"
    assert "differs from the signed statement" in one_error_line(cli("publish", dist, ref, "--key", keys["pub"]), 5)
    assert oci_manifest(registry, "models/tampered", "1") is None  # nothing was pushed
    # Someone with write access to the registry pushes it anyway (integrity alone cannot tell): a pull with the
    # trusted key refuses it.
    ok(cli("publish", dist, ref))
    line = one_error_line(cli("verify", ref, "--key", keys["pub"]), 5)
    assert "differs from the signed statement" in line


def test_bundle_from_a_failed_report_is_not_published(registry, release_build, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(release_build.out, build, ignore=shutil.ignore_patterns(".cache"))
    rp = build / "tiny_cnn" / "report.json"
    report = json.loads(rp.read_text())  # the gate verdict as a failed build records it
    report["status"] = "failed"
    report["targets"]["x86_64"].update(status="failed", reason="metric drop 30.0 exceeds max_metric_drop=25.0")
    rp.write_text(json.dumps(report))
    for flag in ([], ["--allow-failed"]):
        dist = tmp_path / f"dist{len(flag)}"
        ok(cli("package", build, "--version", "9", "-o", dist, *flag))
        line = one_error_line(cli("publish", dist, f"oci://{registry}/models/failed:9"), 13)
        assert "not releasable" in line and "x86_64" in line and "failed" in line
    assert oci_manifest(registry, "models/failed", "9") is None


def test_registry_down_is_one_line(signed, tmp_path):
    ref = f"oci://127.0.0.1:{free_port()}/models/tiny:1"  # nothing listens there
    start = time.monotonic()
    line = one_error_line(cli("publish", signed, ref), 10)
    assert "unreachable" in line and "refused" in line.lower(), line
    assert "unreachable" in one_error_line(cli("verify", ref), 10)
    assert time.monotonic() - start < 10  # no retry loop with back-off


def test_authentication(auth_registry, signed, keys, tmp_path, monkeypatch):
    ref = f"oci://{auth_registry}/models/private:1"
    line = one_error_line(cli("publish", signed, ref), 11)
    assert "requires credentials" in line
    monkeypatch.setenv("ORAS_USER", HTPASSWD_USER)
    monkeypatch.setenv("ORAS_PASS", "wrong-secret-value")
    r = cli("publish", signed, ref)
    line = one_error_line(r, 11)
    assert "refused the credentials from ORAS_USER/ORAS_PASS" in line
    assert "wrong-secret-value" not in r.output
    monkeypatch.delenv("ORAS_USER")
    monkeypatch.delenv("ORAS_PASS")
    config = tmp_path / "docker"  # what `docker login` writes
    config.mkdir()
    token = base64.b64encode(f"{HTPASSWD_USER}:{HTPASSWD_PASS}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {auth_registry: {"auth": token}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    r = cli("publish", signed, ref)
    assert "pushed" in ok(r) and HTPASSWD_PASS not in r.output and token not in r.output
    assert "signature: OK" in ok(cli("verify", ref, "--key", keys["pub"]))


def test_read_only_registry_is_one_line(signed, tmp_path):
    (tmp_path / "ro").mkdir()
    proc, host, log = start_registry(tmp_path / "ro", readonly=True)
    try:
        line = one_error_line(cli("publish", signed, f"oci://{host}/models/tiny:1"), 14)
        assert "refused the request" in line, line
    finally:
        stop(proc, log)


def test_pull_refuses_a_layer_that_escapes_the_bundle(registry, tmp_path):
    import oras.client

    evil = tmp_path / "evil"
    evil.write_bytes(b"pwned")
    (tmp_path / "a.json").write_text(json.dumps({str(evil): {"org.opencontainers.image.title": "../../evil"}}))
    config = tmp_path / "config.json"
    config.write_text("{}")
    client = oras.client.OrasClient(hostname=registry, insecure=True)
    client.push(target=f"{registry}/models/evil:1", files=[str(evil)], annotation_file=str(tmp_path / "a.json"),
                manifest_config=f"{config}:application/vnd.toolchain.bundle.v1+json", disable_path_validation=True,
                quiet=True)
    sandbox = tmp_path / "a" / "b"
    line = one_error_line(cli("verify", f"oci://{registry}/models/evil:1", "-o", sandbox / "pulled"), 5)
    assert "escapes" in line
    assert not (sandbox / "evil").exists() and not (tmp_path / "a" / "evil").exists()


@pytest.mark.parametrize("ref", ["oci://127.0.0.1:5000/models/tiny", "oci://127.0.0.1:5000/Models/tiny:1",
                                 "oci://127.0.0.1:5000", "registry/models:1"])
def test_bad_reference_is_a_usage_error(ref, signed):
    line = one_error_line(cli("publish", signed, ref), 2)
    assert ref in line
