"""make bench helpers that can be checked without running the bench (which is not a test)."""


def test_stage_times_reads_the_progress_lines_of_stages_that_ran():
    """bench_make's per-stage breakdown comes from the builds' own progress lines: `done` lines only (cached
    stages and heartbeats carry no time of their own)."""
    from toolchain.bench import stage_times
    from toolchain.progress import Progress
    import io

    out = io.StringIO()
    p = Progress("m1", stream=out, heartbeat_s=0)
    p.line("trace", None, "running")
    p.line("trace", None, "done", 1.25)
    p.line("plan", "x86_64", "running")
    p.line("plan", "x86_64", "done", 150.5)
    p.line("validate", "arm64", "cached")
    assert stage_times(out.getvalue()) == [("m1", "trace", None, 1.25), ("m1", "plan", "x86_64", 150.5)]
