"""Latency protocol: warm-up, many runs, p50/p90/p99; artifacts compared interleaved (A B B A ...) in one
process so machine noise falls on both alike."""

import time

import numpy as np


def percentiles(samples_ms) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "runs": int(len(a))}


def interleaved(calls: dict, warmup: int, runs: int) -> dict:
    """Time several no-argument callables, alternating their order each round. Returns name -> percentiles."""
    names = list(calls)
    for _ in range(warmup):
        for n in names:
            calls[n]()
    samples = {n: [] for n in names}
    clock = time.perf_counter_ns
    for i in range(runs):
        order = names if i % 2 == 0 else names[::-1]
        for n in order:
            t0 = clock()
            calls[n]()
            samples[n].append((clock() - t0) / 1e6)
    return {n: percentiles(s) for n, s in samples.items()}
