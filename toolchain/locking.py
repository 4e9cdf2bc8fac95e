"""An exclusive lock per output directory, so parallel builds (make -j) never write the same files at once."""

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
