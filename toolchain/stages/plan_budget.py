"""The x86 precision plan's time budget (quantize.time_budget_s), kept by measurement rather than by hope.

The search checks `search_over()` before each unit of work (a variant, a judgement, a timing). That moment is the
budget minus a reserve for the closing steps (timing every candidate side by side, trying the other weight
granularity), estimated from what the same kinds of work have cost in this run so far; the closing steps then
size their runs to the time that is left. Every cost goes into the plan's meta, so a report shows where the
budget went and whether it held.
"""

import time

CLOCK = time.monotonic  # the one clock of the plan's budget (a test replaces it with one it advances itself)
CLOSING_RUNS, MIN_RUNS = 300, 30  # the final side-by-side timing: runs per candidate, and the least it may take


class TimeBudget:
    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.t0 = CLOCK()
        self.deadline = self.t0 + self.seconds
        self.costs = {}  # kind of work -> [count, seconds]
        self.run_s = None  # seconds one timed inference of one variant takes (mean over the timings so far)
        self.stopped_search_at = None

    def now(self) -> float:
        return CLOCK()

    def elapsed(self) -> float:
        return CLOCK() - self.t0

    def left(self) -> float:
        return self.deadline - CLOCK()

    def track(self, kind, t_start, inferences=0):
        """Account one piece of work that started at `t_start` (a CLOCK reading); `inferences`: how many timed
        inferences it ran (a latency measurement), to learn what one costs."""
        took = max(CLOCK() - t_start, 0.0)
        c = self.costs.setdefault(kind, [0, 0.0, 0])
        c[0] += 1
        c[1] += took
        c[2] += inferences
        if inferences:
            per = took / inferences
            self.run_s = per if self.run_s is None else min(self.run_s, per)  # the least: the rest is overhead
        return took

    def mean(self, kind) -> float:
        c = self.costs.get(kind)
        return c[1] / c[0] if c and c[0] else 0.0

    def timing(self, sessions, runs) -> float:
        """Estimated seconds of one interleaved timing: its inferences, plus what a timing call has cost beyond
        its inferences so far (sessions created, warm-up)."""
        run_s = self.run_s or 0.0
        c = self.costs.get("timing")
        overhead = max(c[1] - c[2] * run_s, 0.0) / c[0] if c and c[0] else 0.0
        return sessions * runs * run_s + overhead

    def reserve(self, sessions: int) -> float:
        """Seconds to keep back for the closing steps when `sessions` variants will be timed side by side: the
        final timing at its least number of runs, the other weight granularity (made, timed twice, judged), the
        naive plan judged, and one more unit of search (a check comes before a unit, which may then overrun);
        half as much again, and 5% of the budget, for what the estimates miss."""
        final = self.timing(sessions, MIN_RUNS + MIN_RUNS // 10)
        unit = self.mean("make") + self.mean("judge")
        return 1.5 * (final + self.granularity_cost() + self.mean("judge") + unit) + 0.05 * self.seconds

    def granularity_cost(self) -> float:
        """The other weight granularity's variant made, timed against the chosen plan twice, judged."""
        return self.mean("make") + self.mean("judge") + 2 * self.timing(2, 55)

    def search_over(self, sessions: int = 3) -> bool:
        """True once the search must stop so the closing steps still fit in the budget."""
        over = CLOCK() > self.deadline - self.reserve(sessions)
        if over and self.stopped_search_at is None:
            self.stopped_search_at = self.elapsed()
        return over

    def passed(self) -> bool:
        """plan_search's deadline protocol: the search's stop point (see search_over)."""
        return self.search_over()

    def runs_for(self, sessions: int, want: int = CLOSING_RUNS, keep: float = 0.0) -> int:
        """Runs per variant for a timing of `sessions` variants that fits the time left less `keep` seconds (at
        least MIN_RUNS, at most `want`)."""
        if not self.run_s:
            return want
        fit = int(max(self.left() - keep, 0.0) / (self.run_s * sessions * 1.1))
        return max(MIN_RUNS, min(want, fit))

    def record(self) -> dict:
        total = self.elapsed()
        return {"budget_s": self.seconds, "total_s": round(total, 1), "within_budget": total <= self.seconds,
                "search_stopped_early_at_s": None if self.stopped_search_at is None
                else round(self.stopped_search_at, 1),
                "seconds_by_work": {k: round(v[1], 2) for k, v in sorted(self.costs.items())},
                "count_by_work": {k: v[0] for k, v in sorted(self.costs.items())},
                "ms_per_timed_inference": None if self.run_s is None else round(self.run_s * 1e3, 4)}
