"""User-facing errors and the exit codes they map to.

User errors (a bad spec, bad data, a model that will not trace) print one line and exit with a distinct
code; anything else is an internal error and keeps its traceback.
"""

EXIT_OK = 0
EXIT_GATE_FAILED = 3  # an artifact was built but missed its accuracy/latency budget (artifact kept, marked failed)
EXIT_USAGE = 2  # a spec, target file or command-line error (click also uses 2 for usage errors)
EXIT_STAGE_FAILED = 4  # a stage could not produce its output (trace mismatch, conversion failure, ...)
EXIT_VERIFY_FAILED = 5  # a release bundle does not match its manifest
EXIT_OUTPUT = 6  # the build could not write its outputs (disk full, no permission, read-only file system)
# Publishing a release bundle to an OCI registry (publish.py)
EXIT_REGISTRY_UNREACHABLE = 10  # no connection to the registry (down, wrong host or port, TLS handshake failed)
EXIT_REGISTRY_AUTH = 11  # the registry refused the credentials, or wants some and none were found
EXIT_TAG_EXISTS = 12  # the tag already holds other content (`publish --force` replaces it)
EXIT_NOT_RELEASABLE = 13  # the bundle was packaged from failed or stale reports, or with --allow-failed
EXIT_REGISTRY_REFUSED = 14  # the registry refused a request for another reason (read-only, quota, unsupported)
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report it: temp files removed, the last report marked stale
EXIT_TERMINATED = 143  # SIGTERM (kill, a CI runner cancelling a job): handled like Ctrl-C, as shells report it

import errno as _errno  # noqa: E402

# OSErrors that mean "the machine refused a write", not "the model or data is wrong".
WRITE_ERRNOS = frozenset({_errno.ENOSPC, _errno.EACCES, _errno.EROFS, _errno.EDQUOT, _errno.EPERM})


def reraise_write_error(e: BaseException):
    """In a stage's catch-all: a full disk is the machine's problem, never blamed on the model."""
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        raise e


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # everything str.splitlines() splits on


class ToolchainError(Exception):
    """An error the user can fix; printed as one line, never with a traceback."""

    exit_code = EXIT_USAGE

    def __str__(self):  # one line, whatever a key, a value or a path holds
        return "".join(repr(c)[1:-1] if c in _LINE_BREAKS else c for c in super().__str__())


class SpecError(ToolchainError):
    """A build spec or target file is missing, malformed or inconsistent. Names the file and key."""

    def __init__(self, path, key, message):
        self.path, self.key = str(path), key
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        super().__init__(where + message)


class DataError(ToolchainError):
    """Calibration, evaluation or weights data that cannot be used (wrong shape, NaN, unsafe pickle)."""


class StageError(ToolchainError):
    """A stage failed for one target (or for all, when it is a shared stage)."""

    exit_code = EXIT_STAGE_FAILED

    def __init__(self, stage, message, target=None):
        self.stage, self.target, self.cause = stage, target, message
        where = f"stage {stage}" + (f", target {target}" if target else "")
        super().__init__(f"{where}: {message}")


class OutputError(ToolchainError):
    """The machine refused a write (disk full, permissions). Nothing half-written is left to be trusted."""

    exit_code = EXIT_OUTPUT


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception by the command line (cli.py), so it unwinds like Ctrl-C: children killed,
    temp files removed, the last report marked stale with this cause."""
