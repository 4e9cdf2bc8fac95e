"""Progress lines on stderr while building: model, stage, target, elapsed."""

import sys
import time


class Progress:
    def __init__(self, model, quiet=False, stream=None):
        self.model, self.quiet = model, quiet
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()

    def line(self, stage, target, what, seconds=None):
        if self.quiet:
            return
        where = f"{stage}" + (f"[{target}]" if target else "")
        took = f" {seconds:6.2f}s" if seconds is not None else ""
        total = time.monotonic() - self.t0
        print(f"[{self.model}] {where:<30} {what}{took}  (+{total:.1f}s)", file=self.stream, flush=True)
