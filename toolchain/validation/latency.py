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


def search_options(candidates, lat, timer_for, what, threads=1):
    """Bounded search over runtime-options candidates, measured interleaved on this machine. timer_for(candidate)
    -> the artifact's timer with those options. Returns (chosen candidate, its timer, the record for the report).
    A candidate that fails to load or run (e.g. CUDA graphs with a node on the CPU) is recorded with its reason,
    never chosen."""
    calls, failed, by_name = {}, {}, {}
    for cand in candidates:
        try:
            t = timer_for(cand)
            t()
            calls[cand["name"]], by_name[cand["name"]] = t, cand
        except Exception as e:  # noqa: BLE001 - any runtime refusal disqualifies the candidate
            failed[cand["name"]] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if not calls:
        raise RuntimeError(f"no runtime-options candidate of {what} could run: {failed}")
    timed = interleaved(calls, max(lat["warmup"] // 2, 5), max(lat["runs"] // 2, 20))
    best = min(timed, key=lambda n: timed[n]["p50"])
    # The session settings the figures were taken with travel with the options: an app that runs the artifact
    # with other thread counts gets other latencies (and, with more threads, other scheduling).
    session = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    record = {"chosen": best, "options": {**{k: v for k, v in by_name[best].items() if k != "name"},
                                          "session": session},
              "p50_ms": {n: t["p50"] for n, t in timed.items()}, "failed": failed,
              "note": "the chosen options are those the artifact's accuracy and latency were measured with; they "
                      "change kernels and scheduling, so an app should run the artifact with them"}
    return by_name[best], calls[best], record


def differs_from_default(candidate) -> bool:
    """A runtime-options candidate that opens another session than the defaults would (its outputs may differ in
    the last bits, so accuracy is judged with it)."""
    if not candidate:
        return False
    return candidate.get("graph_optimization", "all") != "all" or bool(candidate.get("provider_options"))


def against_baseline(timer, opener, baseline, feed, lat, candidates=(), artifact=None, unpruned=None, what="",
                     threads=1):
    """The target's latency protocol, the same on the build host and in an executor's entry point: the runtime
    options searched (when the target names candidates), then the artifact interleaved with its fp32 baseline
    (default options), the baseline with the chosen options too, and the unpruned build when there is one.
    opener(path, options=None) -> a session. Returns (chosen candidate or None, search record or None, name ->
    percentiles)."""
    chosen = record = None
    if candidates:
        chosen, timer, record = search_options(candidates, lat, lambda c: opener(artifact, c).timer(feed), what,
                                               threads)
    calls = {"artifact": timer, "baseline": opener(baseline).timer(feed)}
    if chosen and chosen.get("name") != "default":  # fair comparison too: the baseline with the same options
        calls["baseline_same_options"] = opener(baseline, chosen).timer(feed)
    if unpruned is not None:  # the same target built without pruning: the speedup is measured, not a MAC ratio
        calls["unpruned"] = opener(unpruned, chosen).timer(feed)
    return chosen, record, interleaved(calls, lat["warmup"], lat["runs"])
