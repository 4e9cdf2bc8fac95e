"""The host's own python: the runtime's entry point in a child process (LiteRT: x86 kernels on x86)."""

import json
import os
import platform
import sys
from pathlib import Path

from . import process
from .base import Executor, RunResult

ENTRY = Path(__file__).with_name("litert_entry.py")


def stage_files(job, files, out_dir) -> Path:
    """Links the job's files into out_dir (the child's working directory) and writes job.json there."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        link = out_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(path).resolve())
    (out_dir / "job.json").write_text(json.dumps(job))
    return out_dir / "job.json"


def child_env(extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONNOUSERSITE="1", **(extra or {}))
    return env


class LocalExecutor(Executor):
    name = "local"

    def identity(self) -> dict:
        from ..hostinfo import host_id

        return {"name": "local", "host": host_id(), "python": platform.python_version()}

    def run(self, job, files, out_dir, timeout_s, cpu=None, count=False) -> RunResult:
        stage_files(job, files, out_dir)
        entry = ENTRY.with_name(f"{job.get('runtime', 'litert')}_entry.py")
        process.run([sys.executable, str(entry), "job.json"], "local executor", timeout_s, env=child_env(),
                    cwd=out_dir)
        return RunResult(json.loads((Path(out_dir) / job["result"]).read_text()), Path(out_dir))
