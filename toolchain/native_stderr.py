"""Native libraries (LiteRT's C++ core) print INFO lines straight to file descriptor 2, past Python's sys.stderr
and past -q. Around such a call, catch what fd 2 receives and pass on everything but those INFO lines."""

import os
import sys
import tempfile
from contextlib import contextmanager


@contextmanager
def without_native_info():
    from .verbosity import verbose

    if verbose():  # -v: the runtime's own lines are wanted
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [ln for ln in caught.read().decode(errors="replace").splitlines(keepends=True)
                    if not ln.startswith("INFO: ")]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
