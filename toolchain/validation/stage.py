"""validate: the last node of every target (declared like a stage module, stages/__init__.py). Its key holds the
libraries of the target's own runtime only (runtimes.RUNTIMES), so a LiteRT upgrade does not re-validate cuda."""

NAME = "validate"
VERSION = 4  # 2: every output judged (sqnr); 3: int8 ONNX records the optimized graph's op counts; 4: chosen runtime options


def libraries(target) -> tuple:
    from ..runtimes import runtime

    return runtime(target.runtime).libraries


def target_params(target, spec) -> dict:
    """What of the target decides the figures: runtime, providers, threads, the latency protocol, the runtime
    options searched, where it is judged (an executor's identity and runtime versions), and for a split artifact
    the app's post-processing it is judged through (its source: editing it re-judges)."""
    from ..runtimes import runtime
    from .target import app_postprocess

    params = {"runtime": target.runtime, "providers": list(target.providers), "threads": target.threads,
              "latency": target.latency, "runtime_options": target.tables.get("runtime_options", [])}
    post = app_postprocess(target, spec)
    if post is not None:
        import inspect

        from ..digest import sha256_file

        params["app_postprocess"] = {"ref": target.table("convert")["app_postprocess"],
                                     "source_sha256": sha256_file(inspect.getsourcefile(post))}
    from ..executors.config import off_host

    if runtime(target.runtime).judged_on_executor or off_host(target):
        from ..executors import identity

        params["executor"] = identity(target, (target.tables.get("executor") or {}).get("device"))
    return params


def spec_params(spec) -> dict:
    return {"metric": spec.metric, "also": list(spec.extra_metrics)}


def needs(params) -> tuple:
    # artifact first: when it reruns, that is what --explain names
    return ("artifact", "baseline", "reference", "evaluation", "host", "unpruned", "metric_params")


def build(inp, params, out_dir) -> dict:
    from . import target as validate_target

    return validate_target.run(inp.target, inp.artifact, inp.baseline, inp.evaluation, inp.reference, inp.spec,
                               inp.reference_entry.meta["outputs"], inp.unpruned)
