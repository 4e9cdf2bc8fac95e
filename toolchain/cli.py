"""Command line: thin. Parse, call the API, map errors to exit codes (see errors.py)."""

import sys

import click

from .errors import WRITE_ERRNOS, OutputError, ToolchainError


def _fail(e: ToolchainError):
    click.echo(f"error: {e}", err=True)  # one line: ToolchainError escapes line breaks
    sys.exit(e.exit_code)


def _run(fn, *args):
    try:
        return fn(*args)
    except ToolchainError as e:
        _fail(e)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:  # the machine refused a write: a clear line, not a traceback
            raise
        _fail(OutputError(f"cannot write {e.filename or 'build output'}: {e.strerror}"))


def _exit_with_statuses(report, code):
    for tname, t in report["targets"].items():
        extra = f": {t['reason']}" if t.get("reason") else ""
        click.echo(f"{report['model']} {tname}: {t['status']}{extra}")
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


@click.group()
@click.version_option(package_name="toolchain")
def main():
    """Build PyTorch models into validated edge artifacts (x86 int8 ONNX, CUDA fp16 ONNX, ARM int8 TFLite)."""


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_root", default="build", show_default=True, help="Build directory.")
@click.option("--cache-dir", default=None, help="Stage cache (default: OUT/.cache).")
@click.option("-t", "--target", "targets", multiple=True, help="Build only these targets of the spec.")
@click.option("--targets-dir", default=None, help="Directory of target files (default: the repo's targets/).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@click.option("--explain", is_flag=True, help="Build nothing; list each stage that would run and why.")
@click.option("--device", "devices", multiple=True, metavar="TARGET=ssh://USER@HOST:PORT",
              help="Validate TARGET on this device (toolchain/executors/ssh.py).")
def build(spec, out_root, cache_dir, targets, targets_dir, quiet, explain, devices=()):
    """Build SPEC (a build.toml) for its targets; exit 0 only when every gate passes."""
    _point_at(devices)
    from .api import build as do_build
    from .progress import Progress

    if explain:
        from .api import explain as do_explain

        for label, verdict in _run(do_explain, spec, out_root, cache_dir, list(targets) or None, targets_dir):
            click.echo(f"{label:<22} {verdict}")
        return
    from .spec import load_spec

    name = _run(load_spec, spec).name
    report, code = _run(do_build, spec, out_root, cache_dir, list(targets) or None, targets_dir,
                        Progress(name, quiet=quiet))
    _exit_with_statuses(report, code)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_root", default="build", show_default=True, help="Build directory.")
@click.option("-t", "--target", "targets", multiple=True, help="Validate only these targets.")
@click.option("--targets-dir", default=None, help="Directory of target files (default: the repo's targets/).")
@click.option("--device", "devices", multiple=True, metavar="TARGET=ssh://USER@HOST:PORT",
              help="Validate TARGET on this device (toolchain/executors/ssh.py).")
def validate(spec, out_root, targets, targets_dir, devices=()):
    """Re-validate built artifacts of SPEC on this machine's runtimes (e.g. cuda on a GPU host); no rebuild."""
    _point_at(devices)
    from .api import validate as do_validate
    from .progress import Progress
    from .spec import load_spec

    name = _run(load_spec, spec, False).name
    report, code = _run(do_validate, spec, out_root, list(targets) or None, targets_dir, Progress(name))
    _exit_with_statuses(report, code)


@main.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--version", "version", required=True, help="Release version recorded in the manifest.")
@click.option("-o", "--out", "dist", required=True, help="Bundle directory to write (DIST and DIST.tar.gz).")
@click.option("--allow-failed", is_flag=True, help="Also package artifacts that failed their gate or were skipped (marked so in the manifest).")
def package(build_dir, version, dist, allow_failed):
    """Bundle every passed artifact of BUILD_DIR with manifest.json and checksums."""
    from .package import package as do_package

    manifest = _run(do_package, build_dir, version, dist, allow_failed)
    click.echo(f"{dist}: {len(manifest['artifacts'])} artifacts, {len(manifest['excluded'])} left out; "
               f"{dist}.tar.gz")
    for x in manifest["excluded"]:
        click.echo(f"  left out {x['model']} {x['target']} ({x['status']}): {x['reason']}")


@main.command()
@click.argument("dist", type=click.Path(exists=True))
def verify(dist):
    """Check a release bundle (directory or .tar.gz): every checksum, size and manifest entry."""
    from .package import verify as do_verify

    manifest = _run(do_verify, dist)
    click.echo(f"{dist}: OK, {len(manifest['artifacts'])} artifacts verified")


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


if __name__ == "__main__":  # pragma: no cover
    main()
