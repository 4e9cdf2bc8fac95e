"""The Python entry points (`toolchain.build`, `validate`, `package`, `verify`): typed results, quiet by default.

User errors raise ToolchainError (with .exit_code, as the CLI uses); a failed gate is not an exception but a
result whose `ok` is False, as in a make-style build where the report is the answer.
"""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TargetResult:
    name: str
    status: str  # passed | failed | skipped
    reason: str | None
    artifact: Path | None
    sha256: str | None
    metric: float | None
    metric_drop: float | None
    max_metric_drop: float | None
    latency_ratio: float | None  # artifact p50 / its fp32 baseline's p50, measured interleaved
    notes: tuple = ()


@dataclass(frozen=True)
class BuildResult:
    model: str
    status: str  # passed | failed | stage-failed
    exit_code: int  # what `toolchain build` would exit with
    spec: Path
    out_dir: Path  # build/<model>
    report_path: Path
    targets: dict = field(default_factory=dict)  # name -> TargetResult
    report: dict = field(default_factory=dict, repr=False)  # report.json as a dict

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _result(spec_path, model_dir: Path, report: dict, code: int) -> BuildResult:
    targets = {}
    for name, t in report.get("targets", {}).items():
        targets[name] = TargetResult(
            name, t["status"], t.get("reason"), model_dir / t["artifact"] if t.get("artifact") else None,
            t.get("sha256"), t.get("metric"), t.get("metric_drop"), t.get("max_metric_drop"), t.get("latency_ratio"),
            tuple(t.get("notes", ())))
    return BuildResult(report["model"], report["status"], code, Path(spec_path), model_dir, model_dir / "report.json",
                       targets, report)


def build(model_or_spec, *, targets=None, out="build", cache_dir=None, targets_dir=None, quiet=True,
          name=None, version="0.0.0", inputs=None, outputs=None, calibration=None, evaluation=None, labels=None,
          metric=None, budgets=None, target_options=None, cache=None, class_names=None,
          normalization=None, scheduler=None) -> BuildResult:
    """Build a model for its targets and validate every artifact on its runtime.

    model_or_spec: a build.toml path, or a torch.nn.Module. For a module also give `inputs` (a dict of name ->
    shape, array or example tensor; or one of those for a single input), `calibration` (a dict of arrays named
    like the inputs, one array, or a callable returning either) and optionally `evaluation` (default: the
    calibration data), `labels` (then the metric defaults to top-1; else sqnr, the agreement with fp32 in dB),
    `metric`, `targets` (default: x86_64), `budgets` (a number for every target in the metric's budget unit: points
    of top-1 drop, or the sqnr floor in dB; or {target: number}, or {target: {budget key: value}}) and
    `target_options` ({target: {table: {option: value}}}, e.g. {"x86_64": {"quantize": {"method": "auto"}}}).
    Carried inside the artifacts for an app (app_metadata.py): `class_names` (a list for the first output, or
    {output: list}) and `normalization` ({"mean", "std"} for a one-input model, or {input: {"mean", "std"}}: what
    the app does to raw data before feeding it).
    The module's sources (weights, data, generated spec) are written under OUT/.sources/NAME; the same pipeline
    and cache run, so a second call with nothing changed does nothing. `cache`: a shared cache URL read through
    the local one (s3://BUCKET/PREFIX or file:///DIR; default $TOOLCHAIN_REMOTE_CACHE), as `build --cache`.
    `scheduler`: a Dask scheduler (tcp://HOST:PORT; default $TOOLCHAIN_SCHEDULER) to build on, as
    `build --scheduler` (needs `cache`).
    """
    from . import api
    from .progress import Progress
    from .spec import load_spec

    if isinstance(model_or_spec, (str, Path)):
        spec_path = Path(model_or_spec)
    else:
        from .module_spec import write_sources

        spec_path = write_sources(model_or_spec, Path(out) / ".sources", name=name, version=version, inputs=inputs,
                                  outputs=outputs, calibration=calibration, evaluation=evaluation, labels=labels,
                                  metric=metric, targets=targets or ("x86_64",), budgets=budgets,
                                  target_options=target_options, class_names=class_names,
                                  normalization=normalization)
        targets = None  # the generated spec names exactly the targets asked for
    spec = load_spec(spec_path)
    report, code = api.build(spec_path, out, cache_dir, list(targets) if targets else None, targets_dir,
                             Progress(spec.name, quiet=quiet), remote_cache=cache, scheduler=scheduler)
    return _result(spec_path, Path(out) / spec.name, report, code)


def validate(spec, *, targets=None, out="build", targets_dir=None, quiet=True) -> BuildResult:
    """Re-judge built artifacts of SPEC on this machine's runtimes, without rebuilding (e.g. cuda on a GPU host)."""
    from . import api
    from .progress import Progress
    from .spec import load_spec

    name = load_spec(spec, need_weights=False).name
    report, code = api.validate(spec, out, list(targets) if targets else None, targets_dir,
                                Progress(name, quiet=quiet))
    return _result(spec, Path(out) / name, report, code)


def package(build_dir, version, out, *, allow_failed=False, require_all=False, sign_key=None) -> dict:
    """Bundle every passed artifact of BUILD_DIR into OUT and OUT.tar.gz, with checksums and an in-toto provenance
    (DSSE-signed with the ed25519 private key file `sign_key`); returns the manifest."""
    from .bundle import package as do_package

    signer = None
    if sign_key:
        from .signing import load_signer

        signer = load_signer(sign_key)
    return do_package(build_dir, version, out, allow_failed, require_all, signer)


def verify(bundle, *, key=None) -> dict:
    """Check a bundle (directory, .tar.gz or oci://HOST/REPO:TAG): with `key` (a public key file) the signature
    first, then every digest of the provenance and the manifest. Returns the manifest; raises ToolchainError
    (exit_code 5) when anything does not match."""
    trusted = None
    if key:
        from .signing import load_public_key

        trusted = load_public_key(key)
    if str(bundle).startswith("oci://"):
        from .publish import verify_oci

        manifest, _ = verify_oci(str(bundle), trusted)
    else:
        from .provenance import verify_bundle

        manifest, _ = verify_bundle(bundle, trusted)
    return manifest
