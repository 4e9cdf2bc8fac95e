"""The unpruned twin: a pruned build also builds each target from the unpruned model (cached like any stage) to
measure what pruning bought. The twin is a second Pipeline on the same spec without [prune], labelled
"unpruned ...", sharing the first one's cache and bookkeeping; its nodes run among the first one's. Kept apart
because only a pruned build has one, and what it shares is easy to miss inside the constructor.
"""

from dataclasses import replace


def unpruned_twin(pipe, out_root, cache_dir, only_targets, targets_dir):
    """The twin of `pipe` (a Pipeline), or None where its spec prunes nothing."""
    spec = pipe.spec
    if spec.prune is None:
        return None
    twin = type(pipe)(replace(spec, prune=None), out_root, cache_dir, only_targets, targets_dir, pipe.progress,
                      label_prefix="unpruned ")
    twin.cache = pipe.cache
    twin.entries, twin.keys = pipe.entries, pipe.keys  # labels carry "unpruned "
    twin.placements = pipe.placements
    twin.timings = pipe.timings
    return twin


def twin_nodes(twin) -> tuple:
    """The twin's nodes that run in the shared prefix (its trace, and its reference where a conversion reads it),
    and target -> the twin's conversion node; ([], {}) without a twin."""
    if twin is None:
        return [], {}
    from .stages import reference, trace

    twins = {n: twin.node(m, n) for n in twin.targets if (m := twin.transform_module(n))}
    prefix = [twin.node(trace)]
    if any("reference" in t.needs for t in twins.values()):
        prefix.append(twin.node(reference))
    return prefix, twins
