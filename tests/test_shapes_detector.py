"""The detection sample (sample_models/shapes_detector): its mAP against hand-worked cases, the NMS op that
exports as ONNX NonMaxSuppression, the post-processing carried in the graph (and its app-side twin for the
split arm64 artifact), and the pieces of the pipeline it uses (post-processing kept float, split conversion).
The full build is marked slow."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sample_models.shapes_detector import metric
from sample_models.shapes_detector.metric import IOU_THRESHOLDS, average_precision, box_iou, mean_average_precision

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_models" / "shapes_detector"


def _map(dets, gts, thresholds=(0.5,)):
    """dets: per image [(box, score, class)], gts: per image [(box, class)] -> mAP % (padded like the model)."""
    k, g = max(len(d) for d in dets) or 1, max(len(x) for x in gts) or 1
    n = len(dets)
    boxes, scores, classes = np.zeros((n, k, 4)), np.zeros((n, k)), np.full((n, k), -1)
    gb, gc = np.zeros((n, g, 4)), np.full((n, g), -1)
    for i, (d, t) in enumerate(zip(dets, gts)):
        for j, (b, s, c) in enumerate(d):
            boxes[i, j], scores[i, j], classes[i, j] = b, s, c
        for j, (b, c) in enumerate(t):
            gb[i, j], gc[i, j] = b, c
    return mean_average_precision(boxes, scores, classes, gb, gc, thresholds)


# ---- the metric, against cases worked by hand ---------------------------------------------------------------
def test_box_iou_by_hand():
    a = [[0, 0, 10, 10]]
    assert box_iou(a, [[0, 0, 10, 10]])[0, 0] == 1.0
    assert box_iou(a, [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)
    assert box_iou(a, [[20, 20, 30, 30]])[0, 0] == 0.0
    assert box_iou(a, [[0, 0, 10, 8]])[0, 0] == pytest.approx(0.8)


def test_perfect_detections_score_100_and_padding_is_ignored():
    gts = [[([0, 0, 10, 10], 0), ([20, 20, 40, 30], 1)], [([5, 5, 15, 25], 2)]]
    dets = [[(b, 0.9, c) for b, c in g] + [([0, 0, 0, 0], 0.0, -1)] for g in gts]
    assert _map(dets, gts) == pytest.approx(100.0)
    assert _map(dets, gts, IOU_THRESHOLDS) == pytest.approx(100.0)


def test_ap_with_a_false_positive_between_two_hits():
    # one class, 2 boxes; detections by score: hit (0.9), miss (0.8), hit (0.7).
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> made monotone: 1 up to recall 0.5, 2/3 above.
    # COCO's 101 recall points: 0.00..0.50 (51 points) at 1, 0.51..1.00 (50 points) at 2/3.
    gts = [[([0, 0, 10, 10], 0), ([30, 30, 40, 40], 0)]]
    dets = [[([0, 0, 10, 10], 0.9, 0), ([50, 50, 60, 60], 0.8, 0), ([30, 30, 40, 40], 0.7, 0)]]
    assert _map(dets, gts) == pytest.approx(100 * (51 + 50 * 2 / 3) / 101)
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.7], 2) == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_duplicate_detection_is_a_false_positive_and_a_missed_box_halves_recall():
    gts = [[([0, 0, 10, 10], 0), ([30, 30, 40, 40], 0)]]
    # the duplicate scores lower than the hit: precision 1 then 1/2, recall stays 1/2 -> AP = 51/101
    dets = [[([0, 0, 10, 10], 0.9, 0), ([0, 0, 10, 9], 0.8, 0)]]
    assert _map(dets, gts) == pytest.approx(100 * 51 / 101)


def test_iou_range_counts_the_thresholds_a_box_passes():
    # IoU 0.8 with its box: a hit at 0.5, 0.55, ..., 0.8 (7 of the 10 thresholds) -> mAP@0.5:0.95 = 70
    gts = [[([0, 0, 10, 10], 0)]]
    dets = [[([0, 0, 10, 8], 0.9, 0)]]
    assert _map(dets, gts) == pytest.approx(100.0)
    assert _map(dets, gts, IOU_THRESHOLDS) == pytest.approx(70.0)


def test_classes_are_averaged_and_a_wrong_class_is_a_miss():
    gts = [[([0, 0, 10, 10], 0), ([20, 20, 30, 30], 1)]]
    dets = [[([0, 0, 10, 10], 0.9, 0), ([20, 20, 30, 30], 0.9, 2)]]  # class 1 never found; class 2 has no box
    assert _map(dets, gts) == pytest.approx(50.0)  # (AP class 0 = 1, class 1 = 0) / 2; class 2 not in the truth


def test_map_metrics_declare_their_unit_and_read_outputs_by_name():
    assert metric.map_50.metric_unit == "percentage points" and metric.map_50.metric_higher_is_better
    gt_boxes = np.array([[[0, 0, 10, 10]]], np.float32)
    outs = {"boxes": gt_boxes.copy(), "scores": np.array([[0.5]], np.float32), "classes": np.array([[1]])}
    ev = {"gt_boxes": gt_boxes, "gt_classes": np.array([[1]])}
    assert metric.map_50(outs, outs, ev) == 100.0 and metric.map_50_95(outs, outs, ev) == 100.0


# ---- NMS: the PyTorch op and the ONNX op it exports as ------------------------------------------------------
def _export(module, args, path, names):
    import torch

    torch.onnx.export(module, args, str(path), input_names=names[0], output_names=names[1], opset_version=17,
                      dynamo=False, dynamic_axes={"boxes": {1: "boxes"}, "scores": {2: "boxes"}})


def test_nms_keeps_the_best_of_overlapping_boxes_like_onnx_runtime(tmp_path):
    import onnx
    import onnxruntime as ort
    import torch

    from sample_models.shapes_detector.nms import nms

    class M(torch.nn.Module):
        def forward(self, boxes, scores):
            return nms(boxes, scores, 3, 0.5, 0.1)

    boxes = torch.tensor([[[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]]], dtype=torch.float32)
    scores = torch.tensor([[[0.9, 0.8, 0.7, 0.05], [0.2, 0.95, 0.0, 0.3]]])
    got = M()(boxes, scores).tolist()
    # class 0: box 1 overlaps box 0 (IoU 0.82) and goes; box 3 is under the score threshold
    # class 1: box 1 first, box 3 overlaps it (IoU 0.82) and goes, box 0 likewise
    assert got == [[0, 0, 0], [0, 0, 2], [0, 1, 1]]
    _export(M(), (boxes, scores), tmp_path / "nms.onnx", (["boxes", "scores"], ["selected"]))
    model = onnx.load(str(tmp_path / "nms.onnx"))
    assert [n.op_type for n in model.graph.node if n.op_type == "NonMaxSuppression"] == ["NonMaxSuppression"]
    rng = np.random.default_rng(0)
    for _ in range(5):  # random scenes: PyTorch and ONNX Runtime select the same boxes
        xy = rng.uniform(0, 50, (1, 40, 2)).astype(np.float32)
        b = np.concatenate([xy, xy + rng.uniform(3, 15, (1, 40, 2)).astype(np.float32)], axis=2)
        s = rng.uniform(0, 1, (1, 2, 40)).astype(np.float32)
        ref = M()(torch.from_numpy(b), torch.from_numpy(s)).numpy()
        out = ort.InferenceSession(str(tmp_path / "nms.onnx")).run(None, {"boxes": b, "scores": s})[0]
        assert sorted(map(tuple, ref)) == sorted(map(tuple, out))


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """The committed detector exported with its post-processing, and the first evaluation images."""
    import torch
    from safetensors.torch import load_file

    from sample_models.shapes_detector.model import build_model

    model = build_model().eval()
    model.load_state_dict(load_file(str(SAMPLE / "weights.safetensors")))
    with np.load(SAMPLE / "data" / "eval.npz") as z:
        ev = {k: z[k][:48] for k in z.files}
    path = tmp_path_factory.mktemp("detector") / "detector.onnx"
    torch.onnx.export(model, (torch.from_numpy(ev["input"][:1]),), str(path), input_names=["input"],
                      output_names=["boxes", "scores", "classes"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch"} for n in ("input", "boxes", "scores", "classes")})
    return model, path, ev


def test_detector_graph_carries_decode_and_nms_with_fixed_size_outputs(detector):
    import onnx
    import onnxruntime as ort
    import torch

    model, path, ev = detector
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"NonMaxSuppression", "TopK", "Sigmoid"} <= ops
    out = ort.InferenceSession(str(path)).run(None, {"input": ev["input"]})
    assert [o.shape for o in out] == [(48, 16, 4), (48, 16), (48, 16)]
    assert out[2].dtype == np.int64
    with torch.no_grad():
        ref = [t.numpy() for t in model(torch.from_numpy(ev["input"]))]
    np.testing.assert_allclose(out[0], ref[0], atol=1e-3)
    np.testing.assert_allclose(out[1], ref[1], atol=1e-5)
    np.testing.assert_array_equal(out[2], ref[2])
    pad = out[1] == 0
    assert (out[2][pad] == -1).all() and (out[0][pad] == 0).all()
    # the committed weights detect: mAP@0.5 on these images is high (the full set is the build's business)
    assert metric.map_50(dict(zip(("boxes", "scores", "classes"), out)), {}, ev) > 80


def test_app_postprocess_computes_what_the_graph_computes(detector):
    """The arm64 artifact ends at the raw heads; the app's numpy code must give the ONNX graph's detections."""
    import torch

    from sample_models.shapes_detector.postprocess import app_postprocess

    model, _, ev = detector
    with torch.no_grad():
        x = torch.from_numpy(ev["input"])
        heat, box = model.heads(x)
        ref = [t.numpy() for t in model(x)]
    nhwc = [heat.numpy().transpose(0, 2, 3, 1), box.numpy().transpose(0, 2, 3, 1)]  # as LiteRT hands them back
    got = app_postprocess(nhwc[::-1])  # any order: told apart by channels
    np.testing.assert_allclose(got[0], ref[0], atol=1e-3)
    np.testing.assert_allclose(got[1], ref[1], atol=1e-5)
    np.testing.assert_array_equal(got[2], ref[2])


# ---- the pipeline pieces the sample uses --------------------------------------------------------------------
def test_post_processing_nodes_are_the_tail_after_the_heads(detector):
    import onnx

    from toolchain.stages.precision import post_processing_nodes

    _, path, _ = detector
    model = onnx.load(str(path))
    tail = dict(post_processing_nodes(model))
    types = set(tail.values())
    assert {"NonMaxSuppression", "TopK", "Sigmoid", "ScatterElements"} <= types
    assert "Conv" not in types
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    # the backbone's ReLUs feed convs (not post-processing); only the decode's ReLU on the box sides is
    assert [n.name for n in relus if n.name in tail] == [n.name for n in relus if n.input[0].startswith("/heads/box")]


def test_split_graph_ends_at_the_named_tensors(detector, tmp_path):
    import onnx

    from toolchain.errors import StageError
    from toolchain.stages.tflite import split_graph

    _, path, _ = detector
    names = ["/heads/heatmap/Conv_output_0", "/heads/box/Conv_output_0"]
    info = split_graph(path, names, tmp_path / "cut.onnx", "arm64")
    cut = onnx.load(str(tmp_path / "cut.onnx"))
    assert [o.name for o in cut.graph.output] == ["heads_heatmap_Conv_output_0", "heads_box_Conv_output_0"]
    assert info["split_at"] == names
    assert "NonMaxSuppression" in info["dropped_nodes"]
    assert "NonMaxSuppression" not in {n.op_type for n in cut.graph.node}
    with pytest.raises(StageError, match="split_at: 'nope' is not a tensor"):
        split_graph(path, ["nope"], tmp_path / "x.onnx", "arm64")


def test_split_needs_its_app_postprocess(tmp_path):
    from toolchain.errors import SpecError
    from toolchain.stages.tflite import params_for

    with pytest.raises(SpecError, match="app_postprocess: is required"):
        params_for({"split_at": ["t"]}, tmp_path / "b.toml", "targets.arm64.convert")
    with pytest.raises(SpecError, match="split_at: is required"):
        params_for({"app_postprocess": "m:f"}, tmp_path / "b.toml", "targets.arm64.convert")
    with pytest.raises(SpecError, match='precision: "auto" does not take a split artifact'):
        params_for({"split_at": ["t"], "app_postprocess": "m:f", "precision": "auto"}, tmp_path / "b.toml",
                   "targets.arm64.convert")
    assert params_for({"split_at": ["t"], "app_postprocess": "m:f"}, tmp_path / "b.toml")["split_at"] == ["t"]


def test_fp16_keeps_the_post_processing_float32(detector, tmp_path):
    """cuda: op_block_list = ["post-processing"] keeps decode + NMS float32; the artifact runs and its detections
    are fp32's (on the CPU provider: this checks the graph, not CUDA)."""
    import onnx
    import onnxruntime as ort

    from toolchain.stages import fp16
    from toolchain.stages.precision import post_processing_nodes

    _, path, ev = detector
    calib = {"input": ev["input"][:16]}
    meta = fp16.run(path, fp16.params_for({"op_block_list": ["post-processing"]}, tmp_path / "b.toml"), tmp_path,
                    calib, ["input"])
    tail = {n for n, _ in post_processing_nodes(onnx.load(str(path)))}
    assert set(meta["kept_float32_post_processing"]) == tail
    half = onnx.load(str(tmp_path / fp16.OUTPUT))
    convs = [n for n in half.graph.node if n.op_type == "Conv"]
    inits = {i.name: i.data_type for i in half.graph.initializer}
    assert all(inits[c.input[1]] == onnx.TensorProto.FLOAT16 for c in convs)  # the backbone and heads are fp16
    nms = next(n for n in half.graph.node if n.op_type == "NonMaxSuppression")
    assert nms.name in tail
    got = ort.InferenceSession(str(tmp_path / fp16.OUTPUT), providers=["CPUExecutionProvider"]).run(
        None, {"input": ev["input"]})
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": ev["input"]})
    assert metric.map_50(dict(zip(("boxes", "scores", "classes"), got)), {}, ev) == pytest.approx(
        metric.map_50(dict(zip(("boxes", "scores", "classes"), ref)), {}, ev), abs=1.0)


def test_static_quantize_leaves_the_post_processing_float(detector, tmp_path):
    """quantize.nodes_to_exclude = ["post-processing"] (method static, no plan): no output of the tail is
    quantized (without it, some are), while the backbone is."""
    import onnx

    from toolchain.stages import quantize
    from toolchain.stages.precision import post_processing_nodes

    _, path, ev = detector
    tail = {n for n, _ in post_processing_nodes(onnx.load(str(path)))}

    def quantized_tail_outputs(exclude, where):
        where.mkdir()
        params = quantize.params_for({"nodes_to_exclude": exclude}, tmp_path / "b.toml")
        meta = quantize.run(path, params, where, {"input": ev["input"][:8]}, ["input"])
        q = onnx.load(str(where / quantize.OUTPUT))
        producer = {o: n for n in q.graph.node for o in n.output}
        assert meta["op_counts"]["QuantizeLinear"] > 0  # the backbone is int8 either way
        return [producer[n.input[0]].name for n in q.graph.node if n.op_type == "QuantizeLinear"
                and n.input[0] in producer and producer[n.input[0]].name in tail]

    assert quantized_tail_outputs([], tmp_path / "all")  # e.g. the sigmoid scores, the decoded boxes
    assert quantized_tail_outputs(["post-processing"], tmp_path / "tail_float") == []


def test_sample_spec_judges_every_output_by_map():
    from toolchain.spec import load_spec
    from toolchain.validation.metrics import output_gates

    spec = load_spec(SAMPLE / "build.toml")
    for target in ("x86_64", "arm64", "cuda"):
        gates = output_gates(spec, target, "int8")
        assert [(g["output"], g["metric"].split(":")[1], g["unit"]) for g in gates] == [
            ("boxes", "map_50_95", "percentage points"), ("scores", "map_50", "percentage points"),
            ("classes", "map_50", "percentage points")]


# ---- the full build ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_detector_builds_for_every_target_judged_by_map(tmp_path):
    out = tmp_path / "build out"
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "build", str(SAMPLE / "build.toml"), "-o",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "shapes_detector" / "report.json").read_text())
    targets = report["targets"]
    for name in ("x86_64", "arm64", "cuda"):  # cuda: skipped without a GPU, its CPU check still judged by mAP
        t = targets[name]
        outputs = t["outputs"] if name != "cuda" or t["status"] == "passed" else t["cpu_check"]["outputs"]
        assert {o: f["metric"].split(":")[1] for o, f in outputs.items()} == {
            "boxes": "map_50_95", "scores": "map_50", "classes": "map_50"}
        assert all(f["value"] > 60 for f in outputs.values()), outputs
    assert targets["x86_64"]["status"] == targets["arm64"]["status"] == "passed"
    assert targets["cuda"]["status"] in ("passed", "skipped")
    kept = targets["x86_64"]["build"]["plan"]["kept_float"]
    assert any(k["kind"] == "post-processing (NonMaxSuppression)" for k in kept)
    assert targets["arm64"]["app_postprocess"]["function"].endswith("postprocess:app_postprocess")
    assert targets["arm64"]["build"]["split"]["artifact_outputs"] == ["heads_heatmap_Conv_output_0",
                                                                       "heads_box_Conv_output_0"]
