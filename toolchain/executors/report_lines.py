"""report.md lines for a target judged on an executor: where, with which resolvers (LiteRT) or providers (ONNX
Runtime), the device, and the ARM cost."""


def lines(name, t) -> list:
    ex = t["executor"]
    if ex.get("fallback"):
        return [f"- **{name}** NOT judged: no {ex['wanted']} ARM kernels here ({ex['reason']}); host LiteRT ran it "
                "for agreement only"]
    if t.get("runtime") == "onnxruntime":
        return _onnxruntime_lines(name, t, ex)
    where = ex["name"] + (f" aarch64 (qemu {ex.get('qemu', '?')}, -cpu {ex['cores'][0]})" if ex["name"] == "emulated"
                          else f" {ex.get('host', '')}")
    rv = ex.get("runtime_versions", {})
    out = [f"- **{name}** accuracy on {where}, LiteRT {rv.get('ai-edge-litert', '?')}, {t.get('resolver')} resolver"]
    for r, acc in (t.get("resolvers") or {}).items():
        diff = _diff(acc, "_vs_" + str(t.get("resolver")))
        drop = f" (drop {acc['metric_drop']:.3f})" if acc.get("metric_drop") is not None else ""  # floors have none
        out.append(f"  - resolver {r}: metric {acc['metric']:.3f}{drop}, outputs differ "
                   f"by at most {diff} from the {t.get('resolver')} resolver")
    host = t.get("host_litert")
    if host:
        out.append(f"  - host LiteRT (information): metric {host['metric']:.3f}, outputs differ by at most "
                   f"{_diff(host, '_vs_executor')} from the executor's")
    cost = t.get("arm_cost")
    if cost:
        cores = "; ".join(f"{c}: {v['artifact']:,} vs fp32 {v['baseline']:,} instructions = {v['ratio']:.2f}x"
                          for c, v in cost["cores"].items())
        out.append(f"  - ARM cost per inference: {cores}")
    return out


def _diff(d, suffix) -> str:
    lsb = d.get("max_lsb" + suffix)
    return f"{lsb:g} LSB" if lsb is not None else f"{d.get('max_abs_diff' + suffix, 0):.3g} (absolute)"


def _onnxruntime_lines(name, t, ex) -> list:
    rv = ex.get("runtime_versions", {})
    ort = next((f"{d} {rv[d]}" for d in ("onnxruntime-gpu", "onnxruntime") if d in rv), "onnxruntime ?")
    p = ex.get("platform", {})
    where = f"{ex['name']} device {ex.get('device', '')}"
    if "latency_ms" in t:
        out = [f"- **{name}** judged on {where} with {ort}, providers {', '.join(t.get('providers') or [])}"]
    else:  # the provider was missing there, or the run fell back: the reason line above says which
        out = [f"- **{name}** NOT judged on {where} ({ort}, available providers: "
               f"{', '.join(ex.get('available_providers') or []) or '-'})"]
    out.append(f"  - device: {p.get('uname', '?')}; CPU {p.get('cpu', '?')}; GPU "
               f"{'; '.join(p.get('gpus') or []) or 'none (no nvidia-smi)'}")
    nodes = (ex.get("placement") or {}).get("nodes")
    if nodes:
        out.append("  - nodes per provider (ONNX Runtime's profile): "
                   + ", ".join(f"{k} {v}" for k, v in nodes.items()))
    for d, x in (ex.get("versions_differ_from_lock") or {}).items():
        out.append(f"  - {d} {x['device']} on the device, the lock pins {x['lock']}")
    return out
