"""The planner moves elementwise tensors, not only weighted ops, and searches in O(log N).

The model's loss sits in one elementwise tensor: an Add whose constant shifts one channel far
away from the others, so the .tflite's per-tensor int8 grid of the Add output spends its range on
that channel. Keeping every weighted op float cannot help (the Add still writes int8); keeping
the tensor float (the Add and its reader) does. Confirmed on the real LiteRT kernels."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe.accuracy.precision import PRUNE_LIMIT, plan_on_target
from edgepipe.backends.tflite.evaluate import tflite_evaluator
from tests.test_sensitivity import ARM, FEATURES, calibrated, npz_dataset

WIDTH, CLASSES, BUDGET = 32, 10, 0.02


def elementwise_outlier_model(depth: int = 3, outlier: float = 400.0, seed: int = 0) -> onnx.ModelProto:
    """x -> fc1 -> relu -> depth x (Mul by a constant, Add a constant) -> Add(shift) -> fc2 -> logits.

    `shift` moves channel 0 by `outlier`; fc2 reads that channel with weight 0 (its FP32 output
    does not depend on it), so only the int8 grid of the shifted tensor costs accuracy."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((WIDTH, FEATURES)) / np.sqrt(FEATURES)).astype(np.float32)
    w2 = (rng.standard_normal((CLASSES, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    w2[:, 0] = 0.0
    shift = np.zeros(WIDTH, np.float32)
    shift[0] = outlier
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(WIDTH, np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b2"),
             numpy_helper.from_array(shift, "shift")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu1")]
    current = "r"
    for i in range(depth):
        scale = (1.0 + 0.1 * rng.standard_normal(WIDTH)).astype(np.float32)
        inits += [numpy_helper.from_array(scale, f"s{i}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(WIDTH)).astype(np.float32), f"o{i}")]
        nodes += [helper.make_node("Mul", [current, f"s{i}"], [f"m{i}"], name=f"mul{i}"),
                  helper.make_node("Add", [f"m{i}", f"o{i}"], [f"a{i}"], name=f"add{i}")]
        current = f"a{i}"
    nodes += [helper.make_node("Add", [current, "shift"], ["shifted"], name="shift_add"),
              helper.make_node("Gemm", ["shifted", "w2", "b2"], ["logits"], name="fc2", transB=1)]
    g = helper.make_graph(nodes, "elementwise_outlier",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, FEATURES])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planner")
    model = elementwise_outlier_model()
    return model, calibrated(model, tmp), npz_dataset(tmp, "eval", 120, seed=2)


def test_placement_follows_the_tflite_grids(case):
    model, calibration, _ = case
    placement = ARM.int8_placement(model, calibration)
    assert {"shifted", "a0", "m0", "x"} <= set(placement.grids)  # elementwise outputs carry a grid
    assert "h" not in placement.grids  # fused into fc1 + relu1: never written in int8
    assert placement.fused["fc1"] == "relu1"
    scale, _ = placement.grids["shifted"]
    assert scale > 1.0  # the shifted channel owns the grid: one step is worth more than a typical value


def test_switchable_emulation_tracks_litert(case):
    """All switches on: the emulation is the .tflite's int8 (LiteRT's output within a few output
    steps, far closer than FP32 is); all off: exactly the FP32 model."""
    from edgepipe import quantmath
    from edgepipe.accuracy.sensitivity import VariantEvaluator
    from edgepipe.backends.tflite.build import INT8_FILE, build_tflite
    from edgepipe.backends.tflite.runtime import run_tflite

    model, calibration, dataset = case
    evaluator = VariantEvaluator(model, calibration, dataset, target=ARM, max_samples=32, use_placement=True)
    switchable = evaluator.switchable
    emulated = switchable.run(evaluator.feeds, switchable.switches)[0]
    assert np.array_equal(switchable.run(evaluator.feeds, set())[0], evaluator.reference[0])
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        built = build_tflite(model, calibration, Path(tmp), {"target": "arm-cpu"})
        litert = np.concatenate([run_tflite(Path(tmp) / INT8_FILE, built["io"], feed)["logits"]
                                 for feed in evaluator.feeds])
    fp32 = evaluator.reference[0]
    assert quantmath.sqnr_db(litert, emulated) > quantmath.sqnr_db(fp32, litert) + 15.0


def test_weighted_only_float_cannot_fix_an_elementwise_outlier(case):
    model, calibration, dataset = case
    on_litert = tflite_evaluator(model, calibration, dataset, {"target": "arm-cpu"})
    int8 = on_litert(set())
    assert 1.0 - int8["argmax_agreement"] > BUDGET
    weighted_float = on_litert({"fc1", "relu1", "fc2"})
    assert 1.0 - weighted_float["argmax_agreement"] > BUDGET


def test_planner_keeps_the_outlier_tensor_float_and_confirms_on_litert(case):
    model, calibration, dataset = case
    plan = plan_on_target(model, calibration, dataset, BUDGET, ARM, {})
    assert plan.met, plan.reason
    assert plan.steps[-1].evaluator == "backend" and plan.steps[-1].holds
    assert 1.0 - plan.final["argmax_agreement"] <= BUDGET  # measured by LiteRT, not the emulation
    assert "shifted" in plan.float_groups and "shift_add" in plan.float_nodes  # 'shifted' is never int8
    assert plan.sensitivity.nodes[0].group.name == "shifted"  # ranked first by its damage alone
    assert len(plan.float_groups) <= len(plan.sensitivity.nodes) // 2, plan.float_groups  # most stay int8
    search = plan.to_json()["search"]
    # fc2 writes the float graph output, so the lowering keeps it float whatever the plan says
    assert search["int8_ops"] == len({n.name for n in model.graph.node} - plan.float_nodes - {"fc2"})
    assert 0 < search["int8_fraction"] < 1


@pytest.mark.parametrize("depth", [3, 12])
def test_search_evaluations_grow_with_log_n(tmp_path, depth):
    model = elementwise_outlier_model(depth=depth)
    calibration = calibrated(model, tmp_path)
    dataset = npz_dataset(tmp_path, "eval", 64, seed=2)
    plan = plan_on_target(model, calibration, dataset, BUDGET, ARM, {})
    search = plan.to_json()["search"]
    groups = search["groups"]
    assert groups >= 2 * depth  # every Mul/Add output is a candidate
    assert search["ranking_evaluations"] == groups + 1  # one pass: all int8, then each group alone
    # all int8 + the largest prefix + bisection + a bounded prune
    assert search["search_evaluations"] <= math.ceil(math.log2(groups)) + 2 + PRUNE_LIMIT
    assert search["confirm_evaluations"] <= 1 + math.ceil(math.log2(groups))
    assert plan.met, plan.reason
