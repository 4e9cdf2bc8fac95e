"""The one child-process runner: every executor and every stage that runs a child (the onnx2tf worker and its
LiteRT check, the litert-torch worker in its side venv and its check) use it. A time limit, death with the parent
(even on SIGKILL), the whole process group killed on timeout or Ctrl-C, and one ExecutorError carrying the signal
or timeout and the log tail."""

import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass

from .base import ExecutorError

TAIL_LINES = 30


def _die_with_parent():  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Finished:
    """How a child ended within its time limit: its exit status (negative: the signal that killed it), its whole
    combined output, and that signal's name."""

    returncode: int
    log: str
    signal: str | None = None


def run(cmd, what, timeout_s, env=None, cwd=None, stdin=None, stdout=None) -> str:
    """Runs cmd; returns its combined output (with stdout=FILE: its stderr, stdout goes to FILE; stdin=FILE feeds
    it). Raises ExecutorError on a non-zero exit, a signal or the timeout."""
    done = run_child(cmd, what, timeout_s, env, cwd, stdin, stdout)
    rc, text = done.returncode, done.log
    if rc < 0:
        raise ExecutorError(what, f"killed by {done.signal}", rc, signal=done.signal, log_tail=tail(text))
    if rc != 0:
        raise ExecutorError(what, f"exited with status {rc}", rc, log_tail=tail(text))
    return text


def run_child(cmd, what, timeout_s, env=None, cwd=None, stdin=None, stdout=None) -> Finished:
    """Runs cmd to its end, whatever its exit status (callers read their own exit codes and log lines). Raises
    ExecutorError (timed_out=True) only when the time limit passed, after killing the whole process group."""
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, stdout=stdout or log, stderr=log if stdout else subprocess.STDOUT,
                                stdin=stdin or subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True,
                                preexec_fn=_die_with_parent)
        try:
            rc = proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, timed_out = proc.wait(), True
        except BaseException:  # Ctrl-C: take the child down with us
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        log.seek(0)
        text = log.read()
    from ..verbosity import show_log

    show_log(what, text)  # -v: the converter's own log
    if timed_out:
        raise ExecutorError(what, f"timed out after {timeout_s:g} s", rc, timed_out=True, log_tail=tail(text))
    name = (signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)) if rc < 0 else None
    return Finished(rc, text, name)


def tail(text, lines=TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def start(cmd, env=None, cwd=None, stderr=None) -> subprocess.Popen:
    """A long-lived child that answers on stdin/stdout (JSON lines: the TFLite variants server): dies with the
    parent, in its own process group so stop() takes down whatever it started."""
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                            cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)


def stop(proc: subprocess.Popen):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def stop_gracefully(proc: subprocess.Popen, timeout: float = 30):
    """SIGTERM, so a server (a Dask worker, the scheduler) can leave cleanly; SIGKILL if it has not after `timeout`."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
