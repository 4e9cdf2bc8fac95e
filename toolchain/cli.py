"""Command line: thin. Parse, call the API, map errors to exit codes (see errors.py)."""

import sys

import click

from .errors import EXIT_INTERRUPTED, EXIT_TERMINATED, WRITE_ERRNOS, OutputError, Terminated, ToolchainError


def _styled(text, err=False, **style):
    """Colour only on a terminal and without NO_COLOR (verbosity.colour); pipes and files get plain text."""
    from .verbosity import colour

    return click.style(text, **style) if colour(sys.stderr if err else sys.stdout) else text


def _fail(e: ToolchainError):
    click.echo(f"{_styled('error:', True, fg='red', bold=True)} {e}", err=True)  # one line: escapes line breaks
    sys.exit(e.exit_code)


_STATUS_COLOURS = {"passed": "green", "failed": "red", "skipped": "yellow", "stale": "red"}


def _verbosity(quiet, verbose):
    """-q / -v for this command (verbosity.py); returns a Progress factory."""
    from .progress import Progress
    from .verbosity import colour, set_level

    if quiet and verbose:
        raise click.UsageError("-q and -v exclude each other")
    set_level("quiet" if quiet else "verbose" if verbose else "normal")
    return lambda name: Progress(name, quiet=quiet, colour=colour(sys.stderr))


_QUIET = click.option("-q", "--quiet", is_flag=True, help="Nothing but the result: no progress lines, and none of the "
                                                          "converters' or runtimes' own output.")
_VERBOSE = click.option("-v", "--verbose", is_flag=True, help="Also show each converter's log and the runtimes' own "
                                                              "lines (onnx2tf, LiteRT, ONNX Runtime's quantizer).")


def _run(fn, *args):
    try:
        return fn(*args)
    except ToolchainError as e:
        _fail(e)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:  # the machine refused a write: a clear line, not a traceback
            raise
        _fail(OutputError(f"cannot write {e.filename or 'build output'}: {e.strerror}"))


def _terminated(signum, frame):
    raise Terminated()


class _Group(click.Group):
    """Ctrl-C is not a bug (click says "Aborted!" and exits 1): one line and exit 130. SIGTERM (kill, a CI runner
    cancelling the job) is raised as Terminated, a KeyboardInterrupt, so it unwinds the same way: one line and
    exit 143. The code below has already cleaned up on the way out (children killed, temp files removed, a
    build's last report marked stale)."""

    def invoke(self, ctx):
        import signal
        import threading

        main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
        before = signal.signal(signal.SIGTERM, _terminated) if main else None
        try:
            return super().invoke(ctx)
        except Terminated:
            click.echo("error: terminated (SIGTERM): temp files removed; an unfinished build leaves its report "
                       "marked stale", err=True)
            sys.exit(EXIT_TERMINATED)
        except KeyboardInterrupt:
            click.echo(f"{_styled('error:', True, fg='red', bold=True)} interrupted (Ctrl-C): temp files removed; an unfinished build leaves its report "
                       "marked stale", err=True)
            sys.exit(EXIT_INTERRUPTED)
        finally:
            if main:  # as it was (a process that embeds the CLI keeps its own handler)
                signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


def _emit_json(doc, code=0):
    """--json: one JSON document on stdout, nothing else there (progress goes to stderr)."""
    import json

    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))
    sys.exit(code)


def _exit_with_statuses(report, code, as_json=False):
    if as_json:
        _emit_json({"exit_code": code, "report": report}, code)
    for tname, t in report["targets"].items():
        extra = f": {t['reason']}" if t.get("reason") else ""
        status = _styled(t["status"], fg=_STATUS_COLOURS.get(t["status"]), bold=t["status"] == "failed")
        click.echo(f"{report['model']} {tname}: {status}{extra}")
    sys.exit(code)


def _point_at(devices):
    if not devices:
        return
    from .executors.config import point_at

    try:
        if not all("=" in d for d in devices):
            raise ValueError(f"{next(d for d in devices if '=' not in d)!r} names no target")
        point_at(dict(d.split("=", 1) for d in devices))
    except ValueError as e:
        raise click.BadParameter(f"{e} (want TARGET=ssh://user@host:port)", param_hint="--device") from None


@click.group(cls=_Group)
@click.version_option(package_name="toolchain")
def main():
    """Build PyTorch models into validated edge artifacts (x86 int8 ONNX, CUDA fp16 ONNX, ARM int8 TFLite)."""


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="SPEC...")
@click.option("-o", "--out", "out_root", default="build", show_default=True, help="Build directory.")
@click.option("--cache-dir", default=None, help="Stage cache (default: OUT/.cache).")
@click.option("--cache", "remote_cache", default=None, metavar="URL",
              help="A shared cache read through the local one: s3://BUCKET/PREFIX or file:///SHARED/DIR "
                   "(default: $TOOLCHAIN_REMOTE_CACHE; '' for none). See README, Shared cache.")
@click.option("-t", "--target", "targets", multiple=True, help="Build only these targets of the spec.")
@click.option("--targets-dir", default=None, help="A directory of your own target files; they add to the built-in targets (same name: yours wins).")
@_QUIET
@_VERBOSE
@click.option("--explain", is_flag=True, help="Build nothing; list each stage that would run and why.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (or the explanation) as one JSON document.")
@click.option("--device", "devices", multiple=True, metavar="TARGET=ssh://USER@HOST:PORT",
              help="Validate TARGET on this device (toolchain/executors/ssh.py).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run the stages on this Dask scheduler's workers (default: $TOOLCHAIN_SCHEDULER; '' for none); "
                   "needs --cache. See README, Builds on a Dask cluster.")
@click.option("--scheduler-timeout", type=float, default=None, metavar="SECONDS",
              help="With --scheduler: how long to wait for the scheduler to answer and for a worker offering each "
                   "resource the build needs (default: $TOOLCHAIN_SCHEDULER_TIMEOUT or 60).")
def build(specs, out_root, cache_dir, remote_cache, targets, targets_dir, quiet, verbose, explain, as_json,
          devices=(), scheduler=None, scheduler_timeout=None):
    """Build SPEC (a build.toml; several: each in turn, or at once on a cluster) for its targets; exit 0 only when
    every gate passes."""
    progress = _verbosity(quiet, verbose)
    _point_at(devices)
    from .api import build as do_build

    if len(specs) > 1:
        _build_many(specs, out_root, cache_dir, remote_cache, targets, targets_dir, progress, explain, as_json,
                    scheduler, scheduler_timeout)
    spec = specs[0]
    if explain:
        from .api import explain as do_explain

        lines = _run(do_explain, spec, out_root, cache_dir, list(targets) or None, targets_dir)
        if as_json:
            _emit_json({"stages": [{"stage": label, "verdict": verdict} for label, verdict in lines]})
        for label, verdict in lines:
            click.echo(f"{label:<22} {verdict}")
        return
    from .api import load_build_spec

    name = _run(load_build_spec, spec, out_root).name
    report, code = _run(do_build, spec, out_root, cache_dir, list(targets) or None, targets_dir,
                        progress(name), remote_cache, scheduler, scheduler_timeout)
    _exit_with_statuses(report, code, as_json)


def _build_many(specs, out_root, cache_dir, remote_cache, targets, targets_dir, progress, explain, as_json, scheduler,
                scheduler_timeout):
    """Several specs: every model's status lines (and any error line), exit with the worst code."""
    if explain:
        raise click.UsageError("--explain takes one SPEC")
    from .build_many import build_all
    from .cache_backends import resolve
    from .cluster import open_session
    from .api import load_build_spec

    names = {s: _run(load_build_spec, s, out_root).name for s in specs}
    session = _run(open_session, scheduler, resolve(remote_cache), scheduler_timeout)
    kwargs = {"out_root": out_root, "cache_dir": cache_dir, "targets": list(targets) or None,
              "targets_dir": targets_dir, "remote_cache": remote_cache}
    try:
        results = build_all(specs, kwargs, lambda s: progress(names[s]), session)
    finally:
        if session is not None:
            session.close()
    if as_json:
        _emit_json({"exit_code": max(r[2] for r in results),
                    "reports": [r[1] if r[1] is not None else {"spec": r[0], "error": str(r[3])} for r in results]},
                   max(r[2] for r in results))
    for spec, report, code, error in results:
        if error is not None:
            click.echo(f"error: {error}", err=True)
            continue
        for tname, t in report["targets"].items():
            extra = f": {t['reason']}" if t.get("reason") else ""
            click.echo(f"{report['model']} {tname}: {t['status']}{extra}")
    sys.exit(max(r[2] for r in results))


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_root", default="build", show_default=True, help="Build directory.")
@click.option("-t", "--target", "targets", multiple=True, help="Validate only these targets.")
@click.option("--targets-dir", default=None, help="A directory of your own target files; they add to the built-in targets (same name: yours wins).")
@click.option("--json", "as_json", is_flag=True, help="Print the updated report as one JSON document.")
@_QUIET
@_VERBOSE
@click.option("--device", "devices", multiple=True, metavar="TARGET=ssh://USER@HOST:PORT",
              help="Validate TARGET on this device (toolchain/executors/ssh.py).")
def validate(spec, out_root, targets, targets_dir, as_json, quiet, verbose, devices=()):
    """Re-validate built artifacts of SPEC on this machine's runtimes (e.g. cuda on a GPU host); no rebuild."""
    progress = _verbosity(quiet, verbose)
    _point_at(devices)
    from .api import validate as do_validate
    from .spec import load_spec

    name = _run(load_spec, spec, False).name
    report, code = _run(do_validate, spec, out_root, list(targets) or None, targets_dir, progress(name))
    _exit_with_statuses(report, code, as_json)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="The Dask scheduler to serve (default: $TOOLCHAIN_SCHEDULER).")
@click.option("--resources", "resources", multiple=True, metavar="NAME=N",
              help="What this machine offers: arm64=1, cuda=1, x86_64=1 or a target's `resource` label (repeat).")
@click.option("--name", default=None, help="Worker name (default: HOST-RESOURCES-PID); reports record it.")
@click.option("--nthreads", type=int, default=1, show_default=True, help="Stages at once (each uses every core).")
@click.option("--memory-limit", default="0.75", show_default=True,
              help="Dask's memory limit: a share of RAM (0.75), bytes (8GB), or 0 for none.")
@click.option("--dashboard-address", default="127.0.0.1:0", show_default=True, help="Where the dashboard listens.")
@click.option("--cache-dir", default=None, help="A local cache layer kept across restarts (default: scratch).")
@click.argument("dask_args", nargs=-1, type=click.UNPROCESSED)
def worker(scheduler, resources, name, nthreads, memory_limit, dashboard_address, cache_dir, dask_args):
    """Start a Dask worker for `toolchain build --scheduler` with this environment; DASK_ARGS go to `dask worker`."""
    from .cluster.worker import argv, exec_worker, parse_resources

    cmd = _run(argv, scheduler, _run(parse_resources, resources), name, nthreads, memory_limit, dashboard_address,
               dask_args)
    exec_worker(cmd, cache_dir)


@main.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--version", "version", required=True, help="Release version recorded in the manifest.")
@click.option("-o", "--out", "dist", required=True, help="Bundle directory to write (DIST and DIST.tar.gz).")
@click.option("--allow-failed", is_flag=True, help="Also package artifacts that failed their gate or were skipped (marked so in the manifest).")
@click.option("--require-all", is_flag=True,
              help="Fail (exit 3) naming each target a spec asks for that is missing, skipped, failed or stale.")
@click.option("--sign-key", default=None, type=click.Path(dir_okay=False),
              help="ed25519 private key (PEM, from `toolchain keygen`): sign the provenance as a DSSE envelope.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as one JSON document.")
def package(build_dir, version, dist, allow_failed, require_all, sign_key, as_json):
    """Bundle every passed artifact of BUILD_DIR with manifest.json, checksums and an in-toto provenance."""
    from .bundle import package as do_package

    signer = None
    if sign_key:  # a bad key fails before anything is written
        from .signing import load_signer

        signer = _run(load_signer, sign_key)
    manifest = _run(do_package, build_dir, version, dist, allow_failed, require_all, signer)
    if as_json:
        _emit_json({"bundle": dist, "archive": f"{dist}.tar.gz", "manifest": manifest})
    click.echo(f"{dist}: {len(manifest['artifacts'])} artifacts, {len(manifest['excluded'])} left out; "
               f"{dist}.tar.gz")
    for x in manifest["excluded"]:
        click.echo(f"  left out {x['model']} {x['target']} ({x['status']}): {x['reason']}")
    click.echo(f"  provenance: signed with {signer.public_key.keyid[:16]} ({sign_key})" if signer
               else "  provenance: unsigned (pass --sign-key to sign it)")


@main.command()
@click.argument("dist")
@click.option("--key", "key_path", default=None, type=click.Path(dir_okay=False),
              help="Trusted ed25519 public key (PEM): the bundle must carry a valid signature by it.")
@click.option("-o", "--out", "out", default=None,
              help="With oci://: keep the pulled bundle in this (new or empty) directory.")
@click.option("--plain-http", is_flag=True, default=None,
              help="With oci://: talk HTTP, not HTTPS (loopback registries do).")
@click.option("--json", "as_json", is_flag=True, help="Print the verified manifest as one JSON document.")
def verify(dist, key_path, out, plain_http, as_json):
    """Check a release bundle (directory, .tar.gz or oci://HOST/REPO:TAG): with --key the signature first, then
    every digest of the provenance, then every checksum, size and manifest entry."""
    import os

    from .provenance import describe

    key = None
    if key_path:
        from .signing import load_public_key

        key = _run(load_public_key, key_path)
    if dist.startswith("oci://"):
        from .publish import verify_oci

        manifest, summary = _run(verify_oci, dist, key, out, plain_http)
    else:
        if not os.path.exists(dist):
            raise click.BadParameter(f"Path {dist!r} does not exist.", param_hint="'DIST'")
        from .provenance import verify_bundle

        manifest, summary = _run(verify_bundle, dist, key)
    if as_json:
        _emit_json({"bundle": dist, "verified": True, "signature": summary, "manifest": manifest})
    click.echo(f"{dist}: {_styled('OK', fg='green')}, {len(manifest['artifacts'])} artifacts verified")
    click.echo(describe(summary, key_path))


@main.command()
@click.option("-o", "--out", "prefix", required=True, help="Writes PREFIX.key (private, mode 0600) and PREFIX.pub.")
def keygen(prefix):
    """Make an ed25519 key pair for `package --sign-key` and `verify --key` (offline, no keyless service)."""
    from .signing import keygen as do_keygen

    private, public, keyid = _run(do_keygen, prefix)
    click.echo(f"{private}: private key (keep it secret: a CI secret, never in the repository)")
    click.echo(f"{public}: public key, keyid {keyid}")


@main.command()
@click.argument("bundle", type=click.Path(exists=True))
@click.argument("ref")
@click.option("--key", "key_path", default=None, type=click.Path(dir_okay=False),
              help="Trusted ed25519 public key: refuse to publish unless the bundle is signed by it.")
@click.option("--force", is_flag=True, help="Replace a tag that already holds other content.")
@click.option("--plain-http", is_flag=True, default=None, help="Talk HTTP, not HTTPS (loopback registries do).")
def publish(bundle, ref, key_path, force, plain_http):
    """Push a verified release BUNDLE to an OCI registry as REF (oci://HOST[:PORT]/REPOSITORY:TAG). Credentials:
    ORAS_USER/ORAS_PASS, else the docker config (DOCKER_CONFIG or ~/.docker/config.json)."""
    from .provenance import describe
    from .publish import publish as do_publish

    key = None
    if key_path:
        from .signing import load_public_key

        key = _run(load_public_key, key_path)
    result = _run(do_publish, bundle, ref, force, key, plain_http)
    if result["pushed"]:
        click.echo(f"{result['ref']}: pushed {result['layers']} layers, manifest {result['digest']}")
    else:
        click.echo(f"{result['ref']}: already holds this bundle ({result['layers']} layers); nothing pushed")
    click.echo(describe(result["summary"], key_path))


@main.command()
@click.option("-o", "--out", "out_dir", default="build/coverage", show_default=True,
              help="Where the suite's specs, builds and coverage.md / coverage.json go.")
@click.option("--only", default=None, help="Comma-separated patterns (default: every pattern).")
@click.option("-t", "--target", "targets", multiple=True, help="Targets (default: x86_64, arm64, cuda).")
@click.option("--readme", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Replace the block between the coverage markers in this README with the table.")
def coverage(out_dir, only, targets, readme):
    """Build the coverage suite (small models of common patterns) through every target; print the table.
    Exit 0 when every pattern passed on every target, 3 when any did not (the table is written either way)."""
    from . import coverage as cov
    from .errors import EXIT_GATE_FAILED

    names = [p.strip() for p in only.split(",") if p.strip()] if only else None
    targets = tuple(targets) or cov.TARGETS
    rows = _run(cov.run, out_dir, names, targets, None, lambda line: click.echo(line, err=True))
    table = _run(cov.write_outputs, rows, out_dir, readme, targets)
    click.echo(table)
    sys.exit(0 if all(r["status"].startswith("pass") for r in rows) else EXIT_GATE_FAILED)


@main.command("targets")
@click.option("--targets-dir", default=None, help="Also list the target files in this directory.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
def list_targets(targets_dir, as_json):
    """List the targets a spec can name: what each makes, which runtime proves it, and its file."""
    from .targets import known_targets, load_target

    rows = []
    for name, path in known_targets(targets_dir).items():
        t = _run(load_target, name, targets_dir)
        rows.append({"name": name, "format": t.format, "precision": t.precision, "runtime": t.runtime,
                     "providers": list(t.providers), "description": t.description, "file": str(path)})
    if as_json:
        _emit_json({"targets": rows})
    for r in rows:
        click.echo(f"{r['name']:<12} {r['format']} {r['precision']:<5} on {r['runtime']:<12} {r['description']}")
        click.echo(f"{'':<12} {r['file']}")


@main.command("arm-emulator")
@click.option("--dir", "dest", type=click.Path(file_okay=False), default=None,
              help="Where to prepare it (default: $TOOLCHAIN_ARM_EMULATOR, else the checkout's .arm-emulator, else "
                   "~/.cache/toolchain/arm-emulator).")
def arm_emulator(dest):
    """Prepare the emulated aarch64 executor (qemu-user, an arm64 Debian rootfs, aarch64 LiteRT, the ARM cost model's
    plugin) so arm64 is judged on ARM kernels. Idempotent; installs Debian packages with apt-get (root)."""
    from .executors.emulated import emulator_dir
    from .executors.emulator_setup import prepare, version_mismatches

    for line in version_mismatches():
        click.echo(f"warning: {line}: arm64 is judged on the emulator's versions (reports record them)", err=True)
    where = _run(prepare, dest or emulator_dir())
    hint = "" if dest is None or emulator_dir().absolute() == where else \
        f" (builds use it with TOOLCHAIN_ARM_EMULATOR={where})"
    click.echo(f"arm-emulator: ready in {where}{hint}")


@main.command()
@click.argument("factory")
@click.option("-i", "--input", "inputs", multiple=True, required=True,
              help="NAME:SHAPE[:DTYPE], e.g. input:1x3x224x224 (repeat for several inputs).")
@click.option("--output", "outputs", multiple=True, help="Output name (repeat for several; default: output).")
@click.option("-o", "--out", "path", default="build.toml", show_default=True, help="Spec file to write.")
@click.option("--name", default=None, help="Model name (default: the factory's module name).")
@click.option("-t", "--target", "targets", multiple=True, help="Targets (default: x86_64, arm64, cuda).")
@click.option("--weights", default="weights.safetensors", show_default=True, help="Weights file, relative to the spec.")
@click.option("--python-path", default=".", show_default=True, help="Where FACTORY's module is imported from, "
              "relative to the spec.")
@click.option("--no-labels", is_flag=True, help="No labels: judge by sqnr (agreement with fp32, dB) instead of top-1.")
def init(factory, inputs, outputs, path, name, targets, weights, python_path, no_labels):
    """Write a commented build.toml for FACTORY (package.module:function), with placeholders for the data."""
    from .init_spec import write

    written = _run(write, path, factory, inputs, outputs, name, list(targets) or ["x86_64", "arm64", "cuda"],
                   weights, [python_path], not no_labels)
    click.echo(f"{written}: written; fill in the weights and data it names (TODO lines), then "
               f"`toolchain build {written}`")


@main.command()
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False))
def metadata(artifact):
    """Print what an ONNX or TFLite artifact carries for an app (one JSON document): model name and version,
    inputs (shape, dtype, layout and transpose, normalisation, quantization) and outputs (labels, quantization)."""
    import json

    from .app_metadata import read
    from .errors import SpecError

    def _read(path):
        try:
            return read(path)
        except ValueError as e:
            raise SpecError(path, None, str(e).split(": ", 1)[-1]) from None
        except Exception as e:  # noqa: BLE001 - not a model file at all
            raise SpecError(path, None, f"cannot be read as an ONNX or TFLite model ({type(e).__name__})") from None

    click.echo(json.dumps(_run(_read, artifact), indent=2, sort_keys=True))


if __name__ == "__main__":  # pragma: no cover
    main()
