"""The executor interface and its one error type."""

from dataclasses import dataclass, field
from pathlib import Path


class ExecutorError(Exception):
    """The entry point did not finish on the executor: what ran where, the signal or the timeout, the log tail."""

    def __init__(self, executor, message, returncode=None, signal=None, timed_out=False, log_tail=""):
        self.executor, self.returncode, self.signal = executor, returncode, signal
        self.timed_out, self.log_tail = timed_out, log_tail
        super().__init__(f"{executor}: {message}")

    def one_line(self) -> str:
        last = [ln for ln in self.log_tail.splitlines() if ln.strip()][-1:] if self.log_tail else []
        return str(self) + (f" (last log line: {last[0].strip()[:300]})" if last else "")


class ExecutorUnavailable(ExecutorError):
    """The executor cannot be reached or is not set up (emulator missing, device unreachable)."""


@dataclass
class RunResult:
    result: dict  # the entry point's JSON
    out_dir: Path  # where its output files lie on this machine
    counts: dict = field(default_factory=dict)  # marker segment -> instructions (emulated with the cost plugin)


class Executor:
    """run(): copy `files` (name -> local path) next to job.json, run the entry point with that job, bring back
    result.json and the files it names in job["outputs"] into out_dir."""

    name = "executor"

    def identity(self) -> dict:  # what the validate key and the report record; cheap (no run)
        raise NotImplementedError

    def check(self):  # raise ExecutorUnavailable naming what is missing or unreachable
        pass

    def run(self, job: dict, files: dict, out_dir: Path, timeout_s: float, cpu=None, count=False) -> RunResult:
        raise NotImplementedError
