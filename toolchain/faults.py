"""TEST HOOK: inject a fault at a build's stage boundaries, so tests can prove that whatever ends a build other
than success leaves nothing that looks like success.

    TOOLCHAIN_FAULT_AT=<point>[:<kind>]     kind: exception (default), sigint, sigterm, sigkill

Points: `<stage>` before a stage (cached or not), `<stage>.written` when a stage that ran has written its outputs
into the cache's tmp/ (not yet published), `<stage>.remote-record` (with a shared cache) when its blobs are uploaded
and its record is not, `<stage>.done` after it; then `publish` before the artifacts are
published, `report` before the reports are written, `stamp` before the stamp is written, `commit` before report.json
is renamed into place. Without the variable this does nothing; users never set it.
"""

BUILD_POINTS = ("publish", "report", "stamp", "commit")


def stage_points(stages) -> list:
    """Every boundary of a build whose stages run in this order, in the order the build reaches them."""
    return [p for s in stages for p in (s, f"{s}.written", f"{s}.done")] + list(BUILD_POINTS)

import os
import signal

ENV = "TOOLCHAIN_FAULT_AT"
KINDS = ("exception", "sigint", "sigterm", "sigkill")


class InjectedFault(RuntimeError):
    """Stands for any bug: an internal error, never a user error."""


def checkpoint(point: str):
    want = os.environ.get(ENV)
    if not want:
        return
    where, _, kind = want.partition(":")
    if where != point:
        return
    kind = kind or "exception"
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind in ("sigint", "sigterm"):  # Python raises KeyboardInterrupt (the CLI: Terminated) at the next bytecode
        os.kill(os.getpid(), signal.SIGINT if kind == "sigint" else signal.SIGTERM)
        return
    raise InjectedFault(f"fault injected at {point} ({ENV})")
