"""Command-line manners: -q silences the converters and runtimes too, -v shows their logs, colour only on a
terminal (never with NO_COLOR), and pipes get plain text."""

import os
import pty
import shutil
import subprocess

from conftest import toolchain_exe

ANSI = "\x1b["


def _local_arm64(tmp_path):
    """arm64 judged by host LiteRT in this process (a user target file replacing the built-in one), so
    `validate` runs the interpreter here in seconds instead of under the emulator."""
    from toolchain.targets import known_targets

    d = tmp_path / "targets"
    if d.exists():
        return d
    d.mkdir()
    text = known_targets(None)["arm64"].read_text().replace('executor = "emulated"', 'executor = "local"')
    (d / "arm64.toml").write_text(text.replace("runs = 200", "runs = 5").replace("warmup = 20", "warmup = 2"))
    return d


def _validate(arm64_build, tmp_path, *flags):
    out = tmp_path / "out"
    if not out.exists():  # a copy: validate rewrites the report, and the session's build stays as it was
        shutil.copytree(arm64_build.model_dir, out / arm64_build.model_dir.name)
    spec = arm64_build.out.parent / "spec" / "build.toml"
    return subprocess.run([toolchain_exe(), "validate", str(spec), "-o", str(out), "-t", "arm64",
                           "--targets-dir", str(_local_arm64(tmp_path)), *flags],
                          capture_output=True, text=True, timeout=300)


def test_quiet_silences_the_runtime_and_verbose_shows_it(arm64_build, tmp_path):
    """LiteRT prints `INFO: Created TensorFlow Lite XNNPACK delegate` straight to fd 2: nothing of it under -q
    (stderr empty), all of it under -v."""
    q = _validate(arm64_build, tmp_path, "-q")
    assert q.returncode == 0, q.stderr
    assert q.stderr == "" and q.stdout == "tiny_cnn arm64: passed\n"
    v = _validate(arm64_build, tmp_path, "-v")
    assert v.returncode == 0, v.stderr
    assert "INFO: Created TensorFlow Lite XNNPACK delegate" in v.stderr and "validate[arm64]" in v.stderr
    both = _validate(arm64_build, tmp_path, "-q", "-v")
    assert both.returncode == 2 and "-q and -v exclude each other" in both.stderr


def test_verbose_shows_each_converters_log():
    """A child's log (onnx2tf, the LiteRT check, litert-torch) comes through the one runner: -v prints it whole,
    framed; otherwise it stays out of sight."""
    import contextlib
    import io
    import sys

    from toolchain import verbosity
    from toolchain.executors.process import run_child

    code = "import sys; print('converter says hello'); print('and warns', file=sys.stderr)"

    for level, shown in (("normal", False), ("verbose", True)):
        verbosity.set_level(level)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                done = run_child([sys.executable, "-c", code], "fake converter", 60)
        finally:
            verbosity.set_level("normal")
        assert done.returncode == 0 and "converter says hello" in done.log
        assert ("---- fake converter output ----\nconverter says hello\nand warns" in err.getvalue()) is shown


def test_pipes_get_no_colour(x86_build):
    """Not a terminal: no escape sequences in the statuses (stdout), progress or errors (stderr)."""
    spec = x86_build.out.parent / "spec" / "build.toml"
    p = subprocess.run([toolchain_exe(), "build", str(spec), "-o", str(x86_build.out)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "tiny_cnn x86_64: passed" in p.stdout
    assert ANSI not in p.stdout and ANSI not in p.stderr
    bad = subprocess.run([toolchain_exe(), "build", str(spec.with_name("missing.toml"))], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and ANSI not in bad.stderr


def _on_a_terminal(args, env) -> str:
    """Run the command with stdout and stderr on a pseudo-terminal; what it wrote."""
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(args, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        p.wait(timeout=60)
    finally:
        os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_colour_on_a_terminal_unless_no_color(tmp_path):
    args = [toolchain_exe(), "build", str(tmp_path / "missing.toml")]
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    coloured = _on_a_terminal(args, env)
    assert f"{ANSI}31m" in coloured and "error:" in coloured and "build spec not found" in coloured
    plain = _on_a_terminal(args, {**env, "NO_COLOR": "1"})
    assert ANSI not in plain and plain.startswith("error: ")
