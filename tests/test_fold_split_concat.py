"""`fold.split_before_concat` (edgepipe/fold/split_concat.py): a Split moved in front of the
Concat / Reshape that built its input. Exact in float (ONNX Runtime on the original vs the folded
model), and in the int8 .tflite (LiteRT) the split-off box logits keep a grid of their own, so
their error against ONNX Runtime float drops; only the rewrites whose conditions hold apply."""

import numpy as np
from onnx import helper

from edgepipe.backends.tflite.runtime import run_tflite
from edgepipe.fold.split_concat import split_before_concat
from edgepipe.stages.fold import run_fold
from tests.tflite_harness import check_conformance, convert, make_model, run_onnx, structured_inputs

RNG = np.random.default_rng(5)


def yolo_like_head():
    """Two levels; each concatenates box logits (8 channels, small) with class logits (3 channels,
    near -10) on channels, flattens, the levels are concatenated on positions and split back into
    boxes and classes, as YOLOv8's exported head does."""
    nodes, inits, flat = [], {}, []
    for level, size in enumerate((8, 4)):
        src = "x" if level == 0 else "x_small"
        if level:
            nodes.append(helper.make_node("MaxPool", ["x"], ["x_small"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
        inits |= {f"wb{level}": RNG.normal(0, 0.3, (8, 3, 1, 1)), f"bb{level}": RNG.normal(0, 0.2, 8),
                  f"wc{level}": RNG.normal(0, 0.3, (3, 3, 1, 1)), f"bc{level}": np.full(3, -10.0) + RNG.normal(0, 2, 3),
                  f"shape{level}": np.array([1, 11, -1], np.int64)}
        nodes += [helper.make_node("Conv", [src, f"wb{level}", f"bb{level}"], [f"box{level}"], name=f"box_conv{level}"),
                  helper.make_node("Conv", [src, f"wc{level}", f"bc{level}"], [f"cls{level}"], name=f"cls_conv{level}"),
                  helper.make_node("Concat", [f"box{level}", f"cls{level}"], [f"cat{level}"], name=f"cat{level}", axis=1),
                  helper.make_node("Reshape", [f"cat{level}", f"shape{level}"], [f"flat{level}"], name=f"flat{level}")]
        flat.append(f"flat{level}")
    inits["sizes"] = np.array([8, 3], np.int64)
    nodes += [helper.make_node("Concat", flat, ["levels"], name="levels", axis=2),
              helper.make_node("Split", ["levels", "sizes"], ["boxes", "classes"], name="split", axis=1),
              helper.make_node("Softmax", ["boxes"], ["box_probs"], name="softmax", axis=1),
              helper.make_node("Sigmoid", ["classes"], ["scores"], name="sigmoid")]
    return make_model(nodes, {"x": [1, 3, 8, 8]}, ["box_probs", "scores"],
                      {k: np.asarray(v, np.int64 if v.dtype == np.int64 else np.float32) for k, v in inits.items()})


def test_split_moves_in_front_of_concat_and_reshape_exactly():
    model = yolo_like_head()
    folded, report = split_before_concat(model)
    assert report["moved"] == ["split"]
    ops = [n.op_type for n in folded.graph.node]
    assert "Split" not in ops  # the split undid the per-level Concat: its outputs are the convs'
    assert ops.count("Concat") == 2  # boxes of both levels, classes of both levels
    for feed in structured_inputs(model, count=3):
        want, got = run_onnx(model, feed), run_onnx(folded, feed)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_split_stays_where_its_input_has_another_reader_or_the_cut_is_not_on_a_boundary():
    model = yolo_like_head()
    model.graph.node.append(helper.make_node("Relu", ["levels"], ["levels_relu"], name="other_reader"))
    model.graph.output.append(helper.make_tensor_value_info("levels_relu", 1, None))
    assert split_before_concat(model)[1]["moved"] == []
    model = yolo_like_head()
    for init in model.graph.initializer:
        if init.name == "sizes":
            init.int64_data[:] = []
            init.raw_data = np.array([6, 5], np.int64).tobytes()
    folded, report = split_before_concat(model)  # moved through the level Concat, stopped at the cut
    assert [n.op_type for n in folded.graph.node].count("Split") == 2
    feed = structured_inputs(model, count=1)[0]
    for name, value in run_onnx(model, feed).items():
        np.testing.assert_array_equal(run_onnx(folded, feed)[name], value)


def test_int8_tflite_of_the_folded_head_tracks_onnxruntime_closer(tmp_path):
    """LiteRT int8 vs ONNX Runtime float on the box probabilities: with the Split moved, the box
    logits' grid spans the box logits only, not the class logits near -10."""
    model = yolo_like_head()
    folded, _ = run_fold(model, {}, None, None)  # the fold stage's defaults move the Split
    assert "Split" not in [n.op_type for n in folded.graph.node]
    feeds = structured_inputs(model, count=8)
    errors = {}
    for tag, candidate in (("original", model), ("folded", folded)):
        result, _ = convert(candidate, tmp_path / tag, feeds)
        error = 0.0
        for feed in feeds:
            want = run_onnx(model, feed)
            got = run_tflite(tmp_path / tag / "model.tflite", result["io"], feed)
            error += float(np.mean((got["box_probs"] - want["box_probs"]) ** 2))
        errors[tag] = error
    assert errors["folded"] < 0.5 * errors["original"], errors
    # the folded graph's own lowering: fp32 close to ONNX Runtime (scores are sigmoids of logits near
    # -10, ~5e-5, where XNNPACK's sigmoid approximation is 2e-4 relative), int8 within 2 steps of
    # the Q/DQ simulation
    check_conformance(folded, tmp_path / "conformance", feeds, fp32_rtol=5e-4)
