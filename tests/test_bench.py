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
    p.line("unpruned tflite", "arm64", "done", 126.9)  # a pruned build's unpruned twin did this work
    assert stage_times(out.getvalue()) == [("m1", "trace", None, 1.25), ("m1", "plan", "x86_64", 150.5),
                                           ("m1", "tflite", "arm64", 126.9)]


def test_bench_peers_are_made_in_a_scratch_folder_that_goes_away(tmp_path, monkeypatch):
    """The peers (ORT's documented recipe, OpenVINO and NNCF where installed) are made in a private scratch folder
    that is also the working directory meanwhile: nothing lands in the user's current directory or next to the
    model, the folder is gone afterwards, and the peers' sessions still run."""
    import os

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from toolchain import bench_peers, bench_suite

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["output"], name="pool")],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 1, 1])], [w, b])
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    fp32 = model_dir / "model.fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(fp32))
    calibration = {"input": rng.standard_normal((8, 3, 16, 16)).astype(np.float32)}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    missing = []
    with bench_peers.scratch() as work:
        assert os.getcwd() == str(work) and work.parent != cwd
        rows = bench_suite.make_peers(fp32, calibration, ["input"], work, False, missing)
    assert os.getcwd() == str(cwd) and not work.exists()
    assert os.listdir(cwd) == [] and sorted(os.listdir(model_dir)) == ["model.fp32.onnx"]
    names = [r.name for r in rows]
    assert "ORT recipe (static QDQ u8s8 per-channel)" in names, missing
    for r in rows:  # made in the folder that is gone, still runnable
        assert r.outputs(calibration)[0].shape == (8, 8, 1, 1)
        r.timer({"input": calibration["input"][:1]})()


def test_bench_make_builds_what_make_build_builds():
    """The cold-build figure covers every sample the Makefile builds (shapes_detector was missing), started in the
    Makefile's order (longest first, so the slowest builds do not start last)."""
    import re
    from pathlib import Path

    from toolchain.bench import MAKE_MODELS

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    models = re.search(r"(?m)^MODELS := (.*)$", makefile).group(1).split()
    assert list(MAKE_MODELS) == models


def test_suite_nets_are_keyed_on_their_own_code_only(tmp_path):
    """A factory's cache key covers every .py of its package (imports.module_sources): the suite's nets live in a
    package of their own, so editing the toolchain does not retrace (and re-plan) the bench's models."""
    from toolchain import bench_models
    from toolchain.imports import module_sources
    from toolchain.spec import load_spec

    spec = load_spec(bench_models.write_sources("unet_small", tmp_path, arm=False))
    files = module_sources(spec.factory, spec.python_path)
    assert files and {f.parent.name for f in files} == {"bench_nets"}, files
    assert spec.weights.is_file()
