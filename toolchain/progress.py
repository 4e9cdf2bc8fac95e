"""Progress lines on stderr while building: model, stage, target, elapsed; a heartbeat for long stages."""

import sys
import threading
import time

HEARTBEAT_S = 10.0  # a stage running longer than this says so every HEARTBEAT_S seconds (converters take ~10-60 s)


class Progress:
    def __init__(self, model, quiet=False, stream=None, heartbeat_s=HEARTBEAT_S, colour=False):
        self.model, self.quiet, self.colour = model, quiet, colour  # colour: the CLI on a terminal (verbosity.py)
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self.heartbeat_s = heartbeat_s
        self._beats = {}  # (stage, target) -> the event that stops its heartbeat

    def line(self, stage, target, what, seconds=None):
        if self.quiet:
            return
        beat = self._beats.pop((stage, target), None)
        if beat is not None:
            beat.set()
        self._print(stage, target, what, seconds)
        if what == "running" and self.heartbeat_s:
            stop = self._beats[(stage, target)] = threading.Event()
            threading.Thread(target=self._heartbeat, args=(stage, target, stop), daemon=True).start()

    def stop(self, stage, target):
        """End a stage's heartbeat without a line (the stage raised; the error says the rest)."""
        beat = self._beats.pop((stage, target), None)
        if beat is not None:
            beat.set()

    def _heartbeat(self, stage, target, stop):
        started = time.monotonic()
        while not stop.wait(self.heartbeat_s):
            self._print(stage, target, f"still running ({time.monotonic() - started:.0f}s)")

    def _print(self, stage, target, what, seconds=None):
        where = f"{stage}" + (f"[{target}]" if target else "")
        took = f" {seconds:6.2f}s" if seconds is not None else ""
        total = time.monotonic() - self.t0
        word = what.split(" ", 1)[0].rstrip(":")
        if self.colour and word in _COLOURS:
            what = f"{_COLOURS[word]}{word}\x1b[0m{what[len(word):]}"
        print(f"[{self.model}] {where:<30} {what}{took}  (+{total:.1f}s)", file=self.stream, flush=True)


_COLOURS = {"FAILED": "\x1b[31;1m", "done": "\x1b[32m", "cached": "\x1b[2m"}
