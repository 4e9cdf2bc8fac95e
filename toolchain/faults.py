"""TEST HOOK: inject a fault at a build's stage boundaries, so tests can prove that whatever ends a build other
than success leaves nothing that looks like success.

    TOOLCHAIN_FAULT_AT=<point>[:<kind>]     kind: exception (default), sigint, sigkill

Points (BOUNDARIES): `<stage>` before a stage (cached or not), `<stage>.done` after it, `publish` before the
artifacts are published, `report` before report.json is written, `stamp` before the stamp is written. Without the
variable this does nothing; users never set it.
"""

import os
import signal

ENV = "TOOLCHAIN_FAULT_AT"
KINDS = ("exception", "sigint", "sigkill")


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
    if kind == "sigint":
        os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt at the next bytecode
        return
    raise InjectedFault(f"fault injected at {point} ({ENV})")
