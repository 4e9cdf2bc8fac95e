"""A generated block inside a hand-written Markdown file (README tables), between two marker comments."""

from .errors import ToolchainError


def replace_between(text: str, start: str, end: str, block: str, what: str) -> str:
    """`text` with the lines between `start` and `end` replaced by `block`; exactly one such pair must exist."""
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ToolchainError(f"README: needs exactly one {start} ... {end} block for {what}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block.rstrip()}\n{end}{tail}"
