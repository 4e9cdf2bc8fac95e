"""Which child runs judge an artifact on an executor, and how their outputs are put back together.

Emulated ARM is slow (MiniLM's 350 evaluation sentences take ~0.6 s each per resolver under qemu), and one
accuracy run per resolver in one process left a core idle. Runs that do not measure time are independent, so the
work is split into runs a pool executes side by side: one accuracy run per resolver (each over a contiguous
slice of the evaluation set where there are more workers than resolvers) and one counting run per core. Every
slice is judged on the same ARM kernels as the whole set (a batch-1 model's outputs do not depend on what ran
before), and the slices' outputs are concatenated back in order, so the gate sees every sample.

A run that measures latency on a device keeps the device to itself: then there is one accuracy run for all
resolvers, as before.
"""

import math
import os
from dataclasses import dataclass

import numpy as np

MIN_SLICE = 8  # samples: below this a slice's process start-up (~3 s under qemu) outweighs its share of the work


@dataclass
class Run:
    name: str  # out-dir suffix and key in the results
    job: dict
    cpu: str
    count: bool
    resolvers: tuple = ()
    samples: tuple | None = None  # [start, stop) of the evaluation set; None: all of it


def workers(runs: list) -> int:
    """Pool size: as many runs at once as the machine has cores (and no more than there are runs)."""
    return max(1, min(len(runs), os.cpu_count() or 1))


def plan(job: dict, resolvers: list, cores: list, can_count: bool, n_samples: int, cpus: int | None = None) -> list:
    """The runs for one judgement, in the order a pool should start them (accuracy first: it is the longest)."""
    cpus = cpus or os.cpu_count() or 1
    accuracy = {**job, "count": None}
    if job.get("latency"):  # timed on the device: nothing else may run there meanwhile
        runs = [Run("accuracy", accuracy, cores[0], False, tuple(resolvers))]
    else:
        runs = []
        slices = slices_of(n_samples, max(1, math.ceil(cpus / max(1, len(resolvers)))))
        for r in resolvers:
            for k, sl in enumerate(slices):
                name = f"accuracy-{r}" + (f"-{k}" if len(slices) > 1 else "")
                runs.append(Run(name, {**accuracy, "resolvers": [r]}, cores[0], False, (r,),
                                sl if len(slices) > 1 else None))
    if can_count:
        runs += [Run(core, {**job, "resolvers": [], "outputs": None, "latency": None}, core, True) for core in cores]
    return runs


def slices_of(n: int, parts: int) -> list:
    """Contiguous [start, stop) slices covering range(n), at most `parts`, none shorter than MIN_SLICE."""
    parts = max(1, min(parts, n // MIN_SLICE))
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts)]


def outputs(done: dict, runs: list, resolvers: list, n_outputs) -> dict:
    """resolver -> its outputs (one array per output), the slices concatenated in order. n_outputs: an int, or
    None to count a resolver's outputs from the file (a split artifact's raw outputs)."""
    parts = {r: [] for r in resolvers}
    for run in runs:
        if run.count:
            continue
        with np.load(done[run.name].out_dir / run.job["outputs"]) as z:
            for r in run.resolvers:
                n = n_outputs if n_outputs is not None else sum(k.startswith(f"{r}/") for k in z.files)
                parts[r].append([z[f"{r}/{i}"] for i in range(n)])
    return {r: [np.concatenate(col) for col in zip(*p)] for r, p in parts.items()}
