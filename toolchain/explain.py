"""--explain: walk the build plan without building, and name why each stage would run (doit-style reasons:
output missing, input changed, params changed, library version changed)."""

import json

from .pipeline import _artifact_files, _label, _needs_ref


def explain(pipe, previous: dict) -> list:
    """(label, verdict) for each stage of the pipe's plan; `previous` holds the key inputs the last build
    recorded per stage label."""
    lines = []

    def check(st):
        label = _label(st)
        if pipe.cache.get(st.name, st.key) is not None:
            lines.append((label, "up to date"))
            return pipe.cache.get(st.name, st.key, verify=False)
        lines.append((label, "would run: " + _why(previous.get(label), st.key_inputs)))
        return None

    def blocked(label, upstream):
        lines.append((label, f"would run: its input comes from {upstream}, which reruns"))

    if pipe.spec.prune is not None:
        pruned = check(pipe.prune_stage())
        if pruned is None:
            for label in ["trace", "reference"] + [f"{t.transform}[{n}]" for n, t in pipe.targets.items()
                                                   if t.transform] + [f"validate[{n}]" for n in pipe.targets]:
                blocked(label, "prune")
            return lines
        pipe.__dict__["prune_entry"] = pruned
    fp32 = check(pipe.trace_stage())
    ref = pipe.ref_entry = check(pipe.reference_stage(fp32)) if fp32 else blocked("reference", "trace")
    for name, target in pipe.targets.items():
        st = pipe.transform_stage(name, target, fp32) if fp32 and (ref or not _needs_ref(pipe, name)) else None
        if fp32 is None:
            if target.transform:
                blocked(f"{target.transform}[{name}]", "trace")
            blocked(f"validate[{name}]", "trace")
            continue
        if st is None and target.transform:  # needs the reference, which reruns
            blocked(f"{target.transform}[{name}]", "reference")
            blocked(f"validate[{name}]", "reference")
            continue
        entry = check(st) if st else fp32
        if entry is None:
            blocked(f"validate[{name}]", _label(st))
        elif ref is None:
            blocked(f"validate[{name}]", "reference")
        else:
            artifact, baseline = _artifact_files(target, entry, fp32)
            check(pipe.validate_stage(name, target, artifact, baseline, ref))
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
    libs = sorted(f"{k} {prev.get('libraries', {}).get(k)} -> {v}" for k, v in now["libraries"].items()
                  if prev.get("libraries", {}).get(k) != v)
    if libs:
        reasons.append("library version changed: " + ", ".join(libs))
    return "; ".join(reasons) or "key changed"
