"""-v / -q, and colour, for what a command prints. The CLI sets the level for each command; the Python API leaves
it at "normal" (its progress is off by default).

quiet: no progress and none of the converters' or runtimes' own lines. normal: progress lines; the converters'
logs are kept out of sight (they run in child processes whose output is captured; LiteRT's native INFO lines are
filtered: native_stderr.py). verbose: progress, and every converter's log (onnx2tf, the LiteRT checks, the TFLite
quantizer child, litert-torch) after it ends, the runtimes' native INFO lines, and Python's INFO logging (ONNX
Runtime's quantizer, NNCF)."""

import os
import sys

LEVELS = ("quiet", "normal", "verbose")
_level = "normal"


def set_level(level: str):
    global _level
    assert level in LEVELS, level
    _level = level
    if level == "verbose":
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")


def verbose() -> bool:
    return _level == "verbose"


def show_log(what: str, text: str):
    """-v: a child's whole output, framed, on stderr."""
    if _level != "verbose" or not text.strip():
        return
    sys.stderr.write(f"---- {what} output ----\n{text.rstrip()}\n---- end of {what} output ----\n")
    sys.stderr.flush()


def colour(stream) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set to anything (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
