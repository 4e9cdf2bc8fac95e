"""A device over ssh: the runtime's entry point (litert_entry.py or onnxruntime_entry.py, with the few project
files it imports), the artifact, its baseline and the inputs go to a fresh remote work directory as a tar on the
connection's stdin; the device's python runs the entry point under `timeout`, result.json and outputs.npz come
back as a tar on stdout, the directory is removed; one connection per run (the device needs sh, tar, timeout).
The validate key holds the device's runtime versions and machine identity (probe()).

ssh://USER@HOST:PORT?key=PATH&python=PATH&workdir=DIR&known_hosts=PATH (or the target file's [ssh] table).
Key-only (BatchMode): a password prompt would hang a build.
"""

import json
import shlex
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from . import process
from .base import Executor, ExecutorError, ExecutorUnavailable, RunResult

PACKAGE = Path(__file__).resolve().parents[1]
# Each runtime's entry point and the project files it imports, relative to the directory holding the package.
# The package's own __init__.py is not shipped (it imports the Python API): an empty one stands in for it.
ENTRIES = {
    "litert": ("toolchain/executors/litert_entry.py",
               ("toolchain/runtimes/__init__.py", "toolchain/runtimes/base.py", "toolchain/runtimes/litert.py",
                "toolchain/validation/__init__.py", "toolchain/validation/latency.py")),
    "onnxruntime": ("toolchain/executors/onnxruntime_entry.py",
                    ("toolchain/runtimes/__init__.py", "toolchain/runtimes/base.py",
                     "toolchain/runtimes/onnxruntime.py", "toolchain/validation/__init__.py",
                     "toolchain/validation/latency.py")),
}
# Run by the device's python for the validate key: its runtime versions and which machine answers at the address.
PROBE = """import json, platform, sys
from importlib import metadata
def v(d):
    try:
        return metadata.version(d)
    except Exception:
        return None
try:
    mid = open("/etc/machine-id").read().strip()
except OSError:
    mid = ""
print(json.dumps({"versions": {d: v(d) for d in sys.argv[1:]}, "host": [platform.node(), platform.machine(), mid]}))
"""
_PROBED = {}  # (address, python) -> probe result, once per process
CONNECT_TIMEOUT_S = 10


class SshExecutor(Executor):
    name = "ssh"
    measures_latency = True  # a real device: its own timings replace the build host's

    def __init__(self, host, user=None, port=22, key=None, python="python3", workdir="/tmp/toolchain-validate",
                 known_hosts=None):
        self.host, self.user, self.port, self.key = host, user, int(port), key
        self.python, self.workdir, self.known_hosts = python, workdir, known_hosts

    @classmethod
    def from_url(cls, url, defaults=None):
        u = urlsplit(url)
        if u.scheme != "ssh" or not u.hostname:
            raise ValueError(f"not an ssh://[user@]host[:port] address: {url!r}")
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        opts = {k: v for k, v in (defaults or {}).items() if k not in ("url", "timeout_s")}
        opts.update(host=u.hostname, **({"user": u.username} if u.username else {}),
                    **({"port": u.port} if u.port else {}), **q)
        return cls(**opts)

    @classmethod
    def from_options(cls, opts):
        if opts.get("url"):
            return cls.from_url(opts["url"], opts)
        return cls(**{k: v for k, v in opts.items() if k != "timeout_s"})

    @property
    def address(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    def identity(self) -> dict:  # the device itself (uname, cpuinfo) is recorded from the run's result
        return {"name": "ssh", "device": self.address, "python": self.python}

    def probe(self) -> dict:
        """The device's versions of every runtime's libraries and its identity (hostname, machine, machine-id):
        one ssh call, once per process. Raises ExecutorUnavailable when the device does not answer."""
        from ..runtimes import RUNTIMES

        key = (self.address, self.python)
        if key not in _PROBED:
            q = shlex.quote
            dists = sorted({d for r in RUNTIMES.values() for d in r.libraries})
            try:
                out = self._ssh(f"{q(self.python)} -c {q(PROBE)} " + " ".join(q(d) for d in dists),
                                CONNECT_TIMEOUT_S + 30, "versions")
                _PROBED[key] = json.loads(out.strip().splitlines()[-1])
            except (ExecutorError, ValueError, IndexError) as e:
                _PROBED[key] = ExecutorUnavailable(f"ssh device {self.address}", "unreachable",
                                                   log_tail=getattr(e, "log_tail", str(e)))
        if isinstance(_PROBED[key], ExecutorUnavailable):
            raise _PROBED[key]
        return _PROBED[key]

    def _opts(self) -> list:
        o = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", "-o", "LogLevel=ERROR"]
        if self.key:
            o += ["-i", str(self.key), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            o += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=accept-new"]
        return o

    def _dest(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}"

    def _ssh(self, command, timeout_s, what, stdin=None, stdout=None):
        return process.run(["ssh", *self._opts(), "-p", str(self.port), self._dest(), command],
                           f"ssh device {self.address} ({what})", timeout_s, stdin=stdin, stdout=stdout)

    def check(self):
        try:
            self._ssh("true", CONNECT_TIMEOUT_S + 20, "connect")
        except ExecutorError as e:
            raise ExecutorUnavailable(f"ssh device {self.address}", "unreachable",
                                      log_tail=e.log_tail) from None

    def run(self, job, files, out_dir, timeout_s, cpu=None, count=False) -> RunResult:
        """One ssh connection (a handshake costs ~0.4 s idle, seconds on a loaded machine): a tar of the entry
        point, the job and its files on stdin; the device's shell unpacks it into a fresh directory, runs the
        entry point under `timeout`, writes a tar of the results to stdout and removes the directory."""
        import tarfile

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        job = {**job, "count": None}  # no cost plugin on a device
        (out_dir / "job.json").write_text(json.dumps(job))
        entry, payload = ENTRIES[job.get("runtime", "litert")]
        send, got = out_dir / "send.tar", out_dir / "results.tar"
        with tarfile.open(send, "w") as tar:
            for p in (entry, *payload):
                tar.add(PACKAGE.parent / p, arcname=p)
            inits = {"toolchain/__init__.py"} | {str(Path(p).parent / "__init__.py") for p in (entry, *payload)}
            for init in sorted(inits - set(payload)):
                tar.addfile(tarfile.TarInfo(init))  # empty: the real toolchain/__init__.py imports the Python API
            tar.add(out_dir / "job.json", arcname="job.json")
            for name, path in files.items():
                tar.add(Path(path).resolve(), arcname=name)
        fetch = [job["result"]] + ([job["outputs"]] if job.get("outputs") else [])
        q = shlex.quote
        remote = f"{self.workdir.rstrip('/')}/{uuid.uuid4().hex}"
        script = (f'd={q(remote)}; mkdir -p "$d" && cd "$d" && tar xf - || exit 90; '
                  f"timeout -s KILL {int(timeout_s)} {q(self.python)} {q(entry)} job.json >&2; rc=$?; "
                  f"if [ $rc -eq 0 ]; then tar cf - {' '.join(q(n) for n in fetch)}; rc=$?; fi; "
                  f'cd / && rm -rf "$d"; exit $rc')
        with open(send, "rb") as fin, open(got, "wb") as fout:
            self._ssh(script, timeout_s + 30, "validation entry point", stdin=fin, stdout=fout)
        try:
            with tarfile.open(got) as tar:
                for name in fetch:  # only the job's own names, written under out_dir
                    with tar.extractfile(tar.getmember(name)) as src:
                        (out_dir / name).write_bytes(src.read())
        except (tarfile.TarError, KeyError, AttributeError) as e:
            raise ExecutorError(f"ssh device {self.address}", f"returned no {', '.join(fetch)} ({e})") from None
        return RunResult(json.loads((out_dir / job["result"]).read_text()), out_dir)
