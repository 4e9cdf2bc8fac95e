"""--explain: walk the build plan without building, and name why each stage would run (doit-style reasons:
output missing, input changed, params changed, library version changed)."""

import json

from .digest import sha256_json


def explain(pipe, previous: dict) -> list:
    """(label, verdict) for each node of the pipe's graph (pipe.nodes(), the very nodes a build runs); `previous`
    holds the key inputs the last build recorded per node label. A node whose input comes from a node that would
    run is blocked by it (by the first node up its chain that would run)."""
    lines, blocked_by = [], {}  # label -> the node that reruns upstream of it (itself when it would run)
    for node in pipe.nodes():
        label = node.label
        blocker = next((blocked_by[u] for u in node.upstream() if u in blocked_by), None)
        if blocker is not None:
            lines.append((label, f"would run: its input comes from {blocker}, which reruns"))
            blocked_by[label] = blocker
            continue
        key_inputs = node.pipe.key_inputs(node)
        entry = pipe.cache.get(node.name, sha256_json(key_inputs))
        if entry is not None:
            lines.append((label, "up to date"))
            pipe.entries[label] = entry
        else:
            lines.append((label, "would run: " + _why(previous.get(label), key_inputs)))
            blocked_by[label] = label
    return lines


def _why(prev, now) -> str:
    """Name what changed between the key inputs of the last build and now."""
    if prev is None:
        return "no previous build of this stage is recorded"
    now = json.loads(json.dumps(now))  # compare as recorded (JSON turns integer keys into strings)
    if prev == now:
        return "its output is missing from the cache (deleted or corrupt)"
    reasons = []
    if prev.get("stage_version") != now["stage_version"] or prev.get("toolchain") != now["toolchain"]:
        reasons.append("stage or toolchain version changed")
    changed = sorted(k for k in set(prev.get("params", {})) | set(now["params"])
                     if prev.get("params", {}).get(k) != now["params"].get(k))
    if changed:
        reasons.append("params changed: " + ", ".join(changed))
    deps = sorted(k for k in set(prev.get("deps", {})) | set(now["deps"])
                  if prev.get("deps", {}).get(k) != now["deps"].get(k))
    if deps:
        reasons.append("input changed: " + ", ".join(deps))
    before = prev.get("libraries", {})
    libs = sorted(f"{k} {before.get(k)} -> {v}" for k, v in now["libraries"].items() if k in before and before[k] != v)
    if libs:
        reasons.append("library version changed: " + ", ".join(libs))
    moved = sorted([f"+{k}" for k in now["libraries"] if k not in before] + [f"-{k}" for k in before
                                                                              if k not in now["libraries"]])
    if moved:  # the stage declares other libraries (validate: only its own runtime's)
        reasons.append("libraries in its key changed: " + ", ".join(moved))
    return "; ".join(reasons) or "key changed"
