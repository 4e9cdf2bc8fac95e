"""`package` in release pipelines (issue 14, class 6): it never writes over the build or a file, creates the parent
of -o, makes a bundle others can read, refuses reports of builds that did not finish, and --require-all fails
naming every target a spec asks for that is missing, skipped, failed or stale."""

import json
import os
import shutil
import stat

import pytest
from click.testing import CliRunner

from conftest import one_error_line, run_build


def cli(*args):
    from toolchain.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def partial(tmp_path_factory, write_spec, x86_build):
    """A spec asking for x86_64 and cuda, built with `-t x86_64` only (cuda missing from the report)."""
    d = tmp_path_factory.mktemp("partial build")
    spec = write_spec(d / "spec", targets={"cuda": {"max_metric_drop": 1.0}})
    b = run_build(spec, d / "build", targets=["x86_64"], cache_dir=x86_build.out / ".cache")
    assert b.code == 0 and set(b.report["targets"]) == {"x86_64"}
    return b


def files(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.mark.parametrize("where", ["the build dir", "inside it", "a model dir", "its parent"])
def test_dist_that_would_replace_the_build_is_refused(where, partial, tmp_path):
    build = tmp_path / "work" / "build"
    shutil.copytree(partial.out, build)
    before = files(tmp_path / "work")
    dist = {"the build dir": build, "inside it": build / "dist" / "b", "a model dir": build / "tiny_cnn",
            "its parent": tmp_path / "work"}[where]
    one_error_line(cli("package", build, "--version", "1", "-o", dist), 2, f"-o {dist}")
    assert files(tmp_path / "work") == before


def test_existing_directory_that_is_not_a_bundle_is_kept(partial, tmp_path):
    d = tmp_path / "my documents"
    d.mkdir()
    (d / "thesis.txt").write_text("years of work")
    one_error_line(cli("package", partial.out, "--version", "1", "-o", d), 2, "not a release bundle")
    assert (d / "thesis.txt").read_text() == "years of work"


def test_missing_parent_is_created_and_bundle_is_readable(partial, tmp_path):
    dist = tmp_path / "dist" / "releases" / "models-1.0.0"
    old = os.umask(0o022)
    try:
        r = cli("package", partial.out, "--version", "1.0.0", "-o", dist)
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(dist.stat().st_mode) == 0o755  # not mkdtemp's 0700
    assert (dist.parent / "models-1.0.0.tar.gz").is_file()
    assert cli("verify", dist).exit_code == 0
    again = cli("package", partial.out, "--version", "1.0.0", "-o", dist)  # an existing bundle is replaced
    assert again.exit_code == 0, again.output
    assert [p.name for p in dist.parent.iterdir() if p.name.startswith(".package")] == []


def test_require_all_names_each_missing_skipped_or_failed_target(partial, tmp_path):
    r = cli("package", partial.out, "--version", "1", "-o", tmp_path / "dist", "--require-all")
    one_error_line(r, 3, "--require-all", "tiny_cnn cuda (missing")
    assert not (tmp_path / "dist").exists()
    build = tmp_path / "build"
    shutil.copytree(partial.out, build)
    rp = build / "tiny_cnn" / "report.json"
    report = json.loads(rp.read_text())
    report["targets"]["x86_64"].update(status="failed", reason="metric drop 1.8e-05 exceeds the budget")
    rp.write_text(json.dumps(report))
    line = one_error_line(cli("package", build, "--version", "1", "-o", tmp_path / "dist", "--require-all"), 3,
                          "2 target(s) not passed", "tiny_cnn cuda (missing", "tiny_cnn x86_64 (failed: metric drop")
    assert line.count("tiny_cnn") == 2
    plain = cli("package", partial.out, "--version", "1", "-o", tmp_path / "dist")  # without it: exit 0
    assert plain.exit_code == 0, plain.output


def test_stale_report_is_refused_and_allow_failed_marks_it(partial, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(partial.out, build)
    from toolchain.api import _mark_stale

    _mark_stale(build / "tiny_cnn", "the last build was interrupted (Ctrl-C / SIGINT) before it finished")
    one_error_line(cli("package", build, "--version", "1", "-o", tmp_path / "dist"), 2,
                   "did not finish", "interrupted", "--allow-failed")
    r = cli("package", build, "--version", "1", "-o", tmp_path / "dist", "--allow-failed")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "dist" / "manifest.json").read_text())
    assert m["artifacts"] == []
    assert [(x["target"], x["status"]) for x in m["excluded"]] == [("x86_64", "stale")]
    assert "interrupted" in m["excluded"][0]["reason"]


def test_report_of_a_build_whose_shared_stage_failed_is_refused(partial, tmp_path, write_spec):
    """A model whose trace failed has no artifact: the bundle would silently lack it. Refused, unless
    --allow-failed (then its targets are listed as left out, with the cause)."""
    from toolchain.errors import StageError

    build = tmp_path / "build"
    shutil.copytree(partial.out, build)
    spec = write_spec(tmp_path / "spec", "branchy")
    with pytest.raises(StageError):
        run_build(spec, build)
    one_error_line(cli("package", build, "--version", "1", "-o", tmp_path / "dist"), 2,
                   "branchy", "failed (stage-failed: stage trace failed")
    r = cli("package", build, "--version", "1", "-o", tmp_path / "dist", "--allow-failed")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "dist" / "manifest.json").read_text())
    assert [a["model"] for a in m["artifacts"]] == ["tiny_cnn"]
    assert [(x["model"], x["status"]) for x in m["excluded"]] == [("branchy", "failed")]
