"""The executor a target names: `executor = "local" | "emulated" | "ssh"` in targets/NAME.toml (emulated: LiteRT
targets; ssh: LiteRT and ONNX Runtime targets), with its table
([emulated]: cores, resolver, also_resolvers, timeout_s; [ssh]: url or host/user/port/key/python/workdir), or a
device given on the command line (--device TARGET=ssh://user@host:port)."""

import uuid

from ..errors import SpecError

EXECUTORS = ("local", "emulated", "ssh")
EMULATED_DEFAULTS = {"cores": ["cortex-a76", "cortex-a53"], "resolver": "default",
                     "also_resolvers": ["builtin_without_default_delegates"], "timeout_s": 3600}
# qemu 7.2's aarch64 cpu models a target may pin (`max` is refused: it exposes SVE/SME no real phone core has).
CORES = ("cortex-a35", "cortex-a53", "cortex-a55", "cortex-a57", "cortex-a72", "cortex-a76", "a64fx", "neoverse-n1")
SSH_KEYS = ("url", "host", "user", "port", "key", "python", "workdir", "known_hosts", "timeout_s")
DEVICES = {}  # target name -> ssh://... from the command line (--device), see point_at
ENTRY_RUNTIMES = ("litert", "onnxruntime")  # runtimes with a validation entry point (executors/*_entry.py)
_UNREACHABLE = uuid.uuid4().hex  # in the key of a device that did not answer: it never matches a stored result


def point_at(devices: dict):
    """--device TARGET=ssh://user@host:port: validate TARGET on that device (checked to parse here)."""
    from .ssh import SshExecutor

    for name, url in devices.items():
        SshExecutor.from_url(url)  # ValueError names a bad address
    DEVICES.clear()
    DEVICES.update(devices)


def parse(path, t, target_name=None) -> dict:
    """From the target file's _Table: {"name": ..., **that executor's options}."""
    from ..runtimes.litert import RESOLVERS
    from ..spec import _one_of

    name = t.get("executor", (str,), "local", check=_one_of(EXECUTORS))
    out = {"name": name}
    runtime = t.data.get("runtime")
    if name == "emulated" and runtime != "litert":  # the emulated rootfs holds LiteRT only
        raise SpecError(path, "executor", f"{name!r} needs runtime = \"litert\" (the emulated aarch64 userland "
                        "has LiteRT only)")
    if name == "ssh" and runtime not in ENTRY_RUNTIMES:
        raise SpecError(path, "executor", f"{name!r} needs runtime = {' or '.join(map(repr, ENTRY_RUNTIMES))} "
                        f"(the runtimes with a validation entry point), this target runs {runtime!r}")
    if name == "emulated":
        e = t.table("emulated")
        e.reject_unknown(set(EMULATED_DEFAULTS))
        cores = e.get("cores", (list,), EMULATED_DEFAULTS["cores"])
        for c in cores:
            if c not in CORES:
                raise SpecError(path, e.key("cores"), f"unknown core {c!r} (known: {', '.join(CORES)})")
        if not cores:
            raise SpecError(path, e.key("cores"), "must name at least one core")
        out.update(cores=list(cores),
                   resolver=e.get("resolver", (str,), "default", check=_one_of(tuple(RESOLVERS))),
                   also_resolvers=e.get("also_resolvers", (list,), EMULATED_DEFAULTS["also_resolvers"]),
                   timeout_s=e.get("timeout_s", (int, float), EMULATED_DEFAULTS["timeout_s"]))
        for r in out["also_resolvers"]:
            if r not in RESOLVERS:
                raise SpecError(path, e.key("also_resolvers"),
                                f"unknown resolver {r!r} (known: {', '.join(RESOLVERS)})")
    if name == "ssh" or "ssh" in t.data:
        s = t.table("ssh")
        s.reject_unknown(set(SSH_KEYS))
        out["ssh"] = dict(s.data)
        if name == "ssh" and not (s.data.get("url") or s.data.get("host")):
            raise SpecError(path, "ssh", "needs url or host")
    if target_name in DEVICES:
        if runtime not in ENTRY_RUNTIMES:  # never ignore a --device silently
            raise SpecError(path, "runtime", f"--device {target_name}=...: only {' and '.join(ENTRY_RUNTIMES)} "
                            f"targets can be validated on a device so far, this one runs {runtime!r}")
        out["device"] = DEVICES[target_name]
    return out


def for_target(target, device=None):
    """The executor that judges this target (None: validate in this process, as always)."""
    opts = dict(target.tables.get("executor") or {"name": "local"})
    if device:
        from .ssh import SshExecutor

        return SshExecutor.from_url(device, opts.get("ssh"))
    if opts["name"] == "emulated":
        from .emulated import EmulatedExecutor

        return EmulatedExecutor()
    if opts["name"] == "ssh":
        from .ssh import SshExecutor

        return SshExecutor.from_options(opts.get("ssh") or {})
    return None


def identity(target, device=None) -> dict:
    """Cheap (reads stamps, runs nothing): part of the validate key, so a result never outlives its executor."""
    ex = for_target(target, device)
    if ex is None:
        return {"name": "local"}
    opts = target.tables.get("executor") or {}
    keys = ("cores", "resolver", "also_resolvers") if ex.name == "emulated" else ("resolver", "also_resolvers")
    ident = {**ex.identity(), **{k: opts[k] for k in keys if k in opts}}
    if ex.name == "ssh":  # the device's own runtime versions and machine (one ssh call per build process)
        from ..runtimes import runtime
        from .base import ExecutorUnavailable

        try:
            got = ex.probe()
            ident["remote"] = {"versions": {d: got["versions"].get(d) for d in runtime(target.runtime).libraries},
                               "host": got["host"]}
        except ExecutorUnavailable:  # validate runs and names the device (exit 4); no stored result matches
            ident["remote"] = {"unreachable": _UNREACHABLE}
    return ident


def devices_stamp(names) -> dict:
    """For the build's no-op stamp: each --device of these targets with what its device answers now, so pointing
    a target at a device (or away), or a device's runtime upgrade, is never `up to date`."""
    from .base import ExecutorUnavailable
    from .ssh import SshExecutor

    out = {}
    for name in sorted(n for n in DEVICES if n in names):
        try:
            out[name] = {"url": DEVICES[name], "remote": SshExecutor.from_url(DEVICES[name]).probe()}
        except (ExecutorUnavailable, ValueError):
            out[name] = {"url": DEVICES[name], "remote": {"unreachable": _UNREACHABLE}}
    return out


def off_host(target) -> bool:
    """Whether the target is judged by an executor rather than in this process (its table or --device)."""
    opts = target.tables.get("executor") or {}
    return bool(opts.get("device")) or opts.get("name", "local") != "local"
