"""Cross-layer equalization (edgepipe/fold/equalization.py): exact in float (ONNX Runtime on the
original vs the equalized model), equal ranges afterwards (numpy on the weights), only the pairs
where scaling commutes, and a better int8 grid on a model with outlier channels."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph, quantmath
from edgepipe.backends.qdq import simulated_int8_model
from edgepipe.fold.equalization import equalization_pairs, equalize_cross_layer
from edgepipe.stages.fold import run_fold
from tests.tflite_harness import minmax_calibration

RNG = np.random.default_rng(21)


def outlier_model():
    """conv1 -> Relu -> conv2 (pads) -> conv3 -> Clip(0, 6) -> conv4, conv2's output also a graph
    output. Only (conv1, conv2) may be rescaled: (conv2, conv3) would change a graph output and
    Clip does not commute with scaling, so (conv3, conv4) stays too."""
    w1 = RNG.normal(0, 0.3, (8, 3, 3, 3))
    w1[2] *= 200  # outlier output channels of conv1
    w1[5] *= 0.02
    inits = {"w1": w1, "b1": RNG.normal(0, 0.5, 8), "w2": RNG.normal(0, 0.3, (6, 8, 3, 3)),
             "b2": RNG.normal(0, 0.1, 6), "w3": RNG.normal(0, 0.3, (4, 6, 1, 1)),
             "w4": RNG.normal(0, 0.3, (2, 4, 1, 1)),
             "lo": np.array(0.0), "hi": np.array(6.0)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c2", "w3"], ["c3"], name="conv3"),
             helper.make_node("Clip", ["c3", "lo", "hi"], ["k3"], name="clip3"),
             helper.make_node("Conv", ["k3", "w4"], ["y"], name="conv4")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("c2", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return graph.infer_shapes(model)


def feeds(count=8):
    return [{"x": RNG.normal(0, 1, (1, 3, 12, 12)).astype(np.float32)} for _ in range(count)]


def test_only_exact_pairs_are_equalized_and_outputs_are_unchanged():
    model = outlier_model()
    assert [(a.name, b.name) for a, b in equalization_pairs(model)] == [("conv1", "conv2")]
    equalized, report = equalize_cross_layer(model)
    assert [(p["first"], p["second"]) for p in report["pairs"]] == [("conv1", "conv2")]
    before, after = graph.make_session(model), graph.make_session(equalized)
    for feed in feeds():
        for want, got in zip(before.run(None, feed), after.run(None, feed)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    w1 = graph.constant_value(equalized, equalized.graph.node[0].input[1])
    w2 = graph.constant_value(equalized, equalized.graph.node[2].input[1])
    r1 = np.abs(w1).reshape(8, -1).max(1)
    r2 = np.abs(np.moveaxis(w2, 1, 0)).reshape(8, -1).max(1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    assert model.graph.node[0].input[1] == "w1"  # the input model is untouched


def test_int8_simulation_of_the_equalized_model_is_closer_to_float():
    model = outlier_model()
    equalized, _ = equalize_cross_layer(model)
    calib, evaluation = feeds(16), feeds(16)

    def sqnr(m):
        qdq, _ = simulated_int8_model(m, minmax_calibration(m, calib), symmetric=False)
        ref, sim = graph.make_session(model), graph.make_session(qdq)
        want = np.concatenate([ref.run(["c2"], f)[0] for f in evaluation])
        got = np.concatenate([sim.run(["c2"], f)[0] for f in evaluation])
        return quantmath.sqnr_db(want, got)

    assert sqnr(equalized) > sqnr(model) + 1.0


def test_fold_stage_runs_and_checks_it():
    model = outlier_model()
    folded, report = run_fold(model, {"cross_layer_equalization": True})
    assert report["cross_layer_equalization"]["pairs"][0]["first"] == "conv1"
    assert report["cross_layer_equalization"]["max_rel_diff"] < 1e-4
    untouched, report = run_fold(model, {})
    assert "cross_layer_equalization" not in report


def conv_then_depthwise(inits: dict):
    """x [1, 3, 12, 12] -> conv1 (w1, b1: 6 channels) -> depthwise dw (w2, b2: multiplier 2, pads) -> y."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w2", "b2"], ["y"], name="dw", pads=[1, 1, 1, 1], group=6)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return graph.infer_shapes(model)


def depthwise_model():
    """conv1 (outlier channels) -> depthwise conv2 (multiplier 2, pads) -> y."""
    w1 = RNG.normal(0, 0.3, (6, 3, 3, 3))
    w1[1] *= 40
    w1[4] *= 0.05
    inits = {"w1": w1, "b1": RNG.normal(0, 0.5, 6), "w2": RNG.normal(0, 0.3, (12, 1, 3, 3)), "b2": RNG.normal(0, 0.1, 12)}
    return conv_then_depthwise(inits)


def test_depthwise_pair_is_equalized_exactly():
    """A depthwise Conv2 scales each input channel's own filters (both of them, multiplier 2)."""
    model = depthwise_model()
    equalized, report = equalize_cross_layer(model)
    assert [(p["first"], p["second"], p["depthwise"]) for p in report["pairs"]] == [("conv1", "dw", True)]
    before, after = graph.make_session(model), graph.make_session(equalized)
    for feed in feeds():
        want, got = before.run(None, feed)[0], after.run(None, feed)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    w1 = graph.constant_value(equalized, equalized.graph.node[0].input[1])
    w2 = graph.constant_value(equalized, equalized.graph.node[1].input[1])
    np.testing.assert_allclose(np.abs(w1).reshape(6, -1).max(1), np.abs(w2).reshape(6, -1).max(1), rtol=1e-5)


def channel_ranges(model, name, feeds_):
    session = graph.make_session(graph.expose_tensors(model, [name]))
    values = np.concatenate([session.run([name], f)[0] for f in feeds_])
    return np.abs(np.moveaxis(values, 1, 0)).reshape(values.shape[1], -1).max(axis=1)


def bias_outlier_model(rng):
    """conv1 -> depthwise conv2, conv1's channel 1 lifted by a large bias: its activation range
    dwarfs the others' while conv1's weight ranges look alike (what the weights cannot show)."""
    b1 = rng.normal(0, 0.1, 6)
    b1[1] = 25.0
    inits = {"w1": rng.normal(0, 0.3, (6, 3, 3, 3)), "b1": b1, "w2": rng.normal(0, 0.3, (12, 1, 3, 3)),
             "b2": rng.normal(0, 0.1, 12)}
    return conv_then_depthwise(inits)


def test_depthwise_pair_with_measured_ranges_equalizes_the_activation():
    """Given the per-channel ranges of the tensor between the convs (ONNX Runtime's values), a
    depthwise pair makes them equal, exactly in float, and on the tensor's int8 grid its worst
    channel keeps more resolution than with the weight-range rule or without equalization."""
    rng = np.random.default_rng(3)
    model = bias_outlier_model(rng)
    calib = [{"x": rng.normal(0, 1, (1, 3, 12, 12)).astype(np.float32)} for _ in range(8)]
    evaluation = [{"x": rng.normal(0, 1, (1, 3, 12, 12)).astype(np.float32)} for _ in range(16)]
    measured = {"c1": channel_ranges(model, "c1", calib)}
    equalized, report = equalize_cross_layer(model, measured)
    assert [(p["second"], p["by"]) for p in report["pairs"]] == [("dw", "activations")]
    after = channel_ranges(equalized, "c1", calib)
    np.testing.assert_allclose(after, after.mean(), rtol=1e-4)
    before_session, after_session = graph.make_session(model), graph.make_session(equalized)
    for feed in evaluation:
        want, got = before_session.run(None, feed)[0], after_session.run(None, feed)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    by_weights, _ = equalize_cross_layer(model)

    def worst_channel_sqnr(m):
        """Worst channel of the tensor between the convs on its per-tensor int8 grid (numpy:
        observed range, 255 steps), in the original units (the equalized conv1 only rescales it)."""
        scale = channel_ranges(model, "c1", calib) / channel_ranges(m, "c1", calib)
        session = graph.make_session(graph.expose_tensors(m, ["c1"]))
        values = np.concatenate([session.run(["c1"], f)[0] for f in evaluation])
        lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
        step = (hi - lo) / 255
        on_grid = np.clip(np.round((values - lo) / step), 0, 255) * step + lo
        return min(quantmath.sqnr_db(values[:, c] * scale[c], on_grid[:, c] * scale[c])
                   for c in range(values.shape[1]))

    ours = worst_channel_sqnr(equalized)
    assert ours > worst_channel_sqnr(by_weights) + 3.0
    assert ours > worst_channel_sqnr(model) + 3.0


def test_fold_stage_measures_depthwise_ranges_on_calibration_data():
    from tests.helpers import ArrayDataset

    model = depthwise_model()
    data = ArrayDataset(np.concatenate([f["x"] for f in feeds(8)]))
    _, report = run_fold(model, {"cross_layer_equalization": True}, calib_dataset=data)
    assert report["cross_layer_equalization"]["pairs"][0]["by"] == "activations"
    assert report["cross_layer_equalization"]["max_rel_diff"] < 1e-4
    _, report = run_fold(model, {"cross_layer_equalization": True})  # no data: the weights decide
    assert report["cross_layer_equalization"]["pairs"][0]["by"] == "weights"


def test_depthwise_mode_leaves_group1_pairs_alone():
    """`fold.cross_layer_equalization: depthwise` rescales a Conv -> depthwise pair, not a Conv ->
    Relu -> group-1 Conv pair; true rescales both."""
    assert equalization_pairs(outlier_model(), depthwise_only=True) == []
    _, report = run_fold(outlier_model(), {"cross_layer_equalization": "depthwise"})
    assert report["cross_layer_equalization"]["pairs"] == []
    _, report = run_fold(depthwise_model(), {"cross_layer_equalization": "depthwise"})
    assert [p["second"] for p in report["cross_layer_equalization"]["pairs"]] == ["dw"]


def test_cached_fold_follows_the_calibration_data(tmp_path):
    """Equalization on measured ranges reads the calibration data, so the fold stage's cache key
    does too: other data refolds, the same data reuses the cached fold (`edgepipe build --json`)."""
    import json

    from tests.helpers import run_cli

    onnx.save(depthwise_model(), str(tmp_path / "model.onnx"))
    (tmp_path / "edgepipe.yaml").write_text("fold:\n  cross_layer_equalization: depthwise\n")
    rng = np.random.default_rng(5)
    for name, spread in (("a.npz", 1.0), ("b.npz", 3.0)):
        np.savez(tmp_path / name, x=(rng.normal(0, spread, (8, 3, 12, 12))).astype(np.float32))

    def fold_cached(calib: str) -> bool:
        result = run_cli("build", "--model", "model.onnx", "--target", "jetson", "--calib", calib, "--json",
                         cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return {s["name"]: s["cached"] for s in json.loads(result.stdout[result.stdout.index("{"):])["stages"]}["fold"]

    assert not fold_cached("a.npz")
    assert not fold_cached("b.npz")
    assert fold_cached("a.npz")


def test_folds_with_nothing_to_do_are_off_in_the_settings_so_targets_share_the_fold():
    """settings_that_apply: arm-cpu's default folds drop out of the fold stage's settings (its cache
    key) where the graph has no pair to equalize or chain to fold; where it has one they stay."""
    from edgepipe.stages.fold import settings_that_apply

    on = {"constant_affine": True, "cross_layer_equalization": "depthwise"}
    kept = settings_that_apply(depthwise_model(), on)
    assert kept["cross_layer_equalization"] == "depthwise" and kept["constant_affine"] is False
    assert settings_that_apply(outlier_model(), on) == {"constant_affine": False, "cross_layer_equalization": False}
    assert settings_that_apply(outlier_model(), {"cross_layer_equalization": True})["cross_layer_equalization"] is True
