"""The planner moves elementwise tensors, not only weighted ops, and searches in O(log N).

The model's loss sits in one elementwise tensor: an Add whose constant shifts one channel far
away from the others, so the .tflite's per-tensor int8 grid of the Add output spends its range on
that channel. Keeping every weighted op float cannot help (the Add still writes int8); keeping
the tensor float (the Add and its reader) does. Confirmed on the real LiteRT kernels. With the
int16 level (`precision.levels: [int8, int16, float]`) the same tensor at 16x8 is enough: no
float at all."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe.accuracy.precision import PRUNE_EVALUATIONS, PRUNE_LIMIT, plan_on_target, summary_line
from edgepipe.backends.tflite.evaluate import tflite_evaluator
from tests.test_sensitivity import ARM, FEATURES, calibrated, npz_dataset

# The outlier tensor these tests plant is one arm-cpu's wide-range rule keeps float by itself
# (backend.wide_range_float, default on): turned off here so the planner has it to find.
NO_RULE = {"wide_range_float": False}

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
    placement = ARM.int8_placement(model, calibration, NO_RULE)
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
    evaluator = VariantEvaluator(model, calibration, dataset, target=ARM, max_samples=32, use_placement=True,
                                 backend=NO_RULE)
    switchable = evaluator.switchable
    emulated = switchable.run(evaluator.feeds, switchable.switches)[0]
    assert np.array_equal(switchable.run(evaluator.feeds, set())[0], evaluator.reference[0])
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        built = build_tflite(model, calibration, Path(tmp), {"target": "arm-cpu", **NO_RULE})
        litert = np.concatenate([run_tflite(Path(tmp) / INT8_FILE, built["io"], feed)["logits"]
                                 for feed in evaluator.feeds])
    fp32 = evaluator.reference[0]
    assert quantmath.sqnr_db(litert, emulated) > quantmath.sqnr_db(fp32, litert) + 15.0


def test_weighted_only_float_cannot_fix_an_elementwise_outlier(case):
    model, calibration, dataset = case
    on_litert = tflite_evaluator(model, calibration, dataset, {"target": "arm-cpu", **NO_RULE})
    int8 = on_litert(set())
    assert 1.0 - int8["argmax_agreement"] > BUDGET
    weighted_float = on_litert({"fc1", "relu1", "fc2"})
    assert 1.0 - weighted_float["argmax_agreement"] > BUDGET


def test_planner_keeps_the_outlier_tensor_float_and_confirms_on_litert(case):
    model, calibration, dataset = case
    plan = plan_on_target(model, calibration, dataset, BUDGET, ARM, NO_RULE, levels=("int8", "float"))
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


def test_early_reject_changes_no_plan(case):
    """The search's LiteRT runs stop early where even a perfect rest would break the budget; the
    plan, and every step's accept/reject answer, are those of full runs."""
    from edgepipe.accuracy.precision import plan_mixed_precision

    model, calibration, dataset = case
    litert = tflite_evaluator(model, calibration, dataset, {"target": "arm-cpu", **NO_RULE})
    stopped = []

    def early(float_nodes, int16_nodes=(), stop=None):
        metrics = litert(float_nodes, int16_nodes, stop=stop)
        stopped.append("stopped_after" in metrics)
        return metrics

    def full(float_nodes, int16_nodes=()):  # no `stop` parameter: every run goes to the end
        return litert(float_nodes, int16_nodes)

    plans = [plan_mixed_precision(model, calibration, dataset, BUDGET, target=ARM, evaluate=evaluate,
                                  levels=("int8", "float"), backend=NO_RULE) for evaluate in (early, full)]
    assert any(stopped)
    assert plans[0].float_groups == plans[1].float_groups and plans[0].met and plans[1].met
    assert [(s.float_groups, s.holds) for s in plans[0].steps] == [(s.float_groups, s.holds) for s in plans[1].steps]
    assert plans[0].final == plans[1].final  # the confirmation is a full run
    # steps answered by a stopped run (a repeated candidate reuses its cached answer)
    assert plans[0].to_json()["search"]["early_rejects"] >= sum(stopped) > 0
    assert plans[1].to_json()["search"]["early_rejects"] == 0


def test_planner_uses_int16_where_it_suffices_and_confirms_on_litert(case):
    """levels int8 -> int16 -> float: the outlier tensor goes 16x8, nothing float; LiteRT on the
    plan's own int16/float sets (not the planner's numbers) meets the budget."""
    model, calibration, dataset = case
    plan = plan_on_target(model, calibration, dataset, BUDGET, ARM, NO_RULE, levels=("int8", "int16", "float"))
    assert plan.met, plan.reason
    assert plan.levels == ("int8", "int16", "float")
    assert not plan.float_groups and not plan.float_nodes
    assert "shifted" in plan.int16_groups and "shift_add" in plan.int16_nodes
    assert len(plan.int16_groups) <= len(plan.sensitivity.nodes) // 2, plan.int16_groups  # most stay int8
    litert = tflite_evaluator(model, calibration, dataset, {"target": "arm-cpu", **NO_RULE})
    assert 1.0 - litert(set())["argmax_agreement"] > BUDGET
    assert 1.0 - litert(plan.float_nodes, plan.int16_nodes)["argmax_agreement"] <= BUDGET
    search = plan.to_json()["search"]
    assert search["int16_ops"] == len(plan.int16_nodes) and search["float_ops"] == 1  # fc2 writes the float output
    assert search["int8_ops"] + search["int16_ops"] + search["float_ops"] == search["ops"]
    assert plan.steps[-1].evaluator == "backend" and plan.summary()["int16_groups"] == len(plan.int16_groups)
    line = summary_line(plan.summary())  # the build's line: the three shares and the evaluations
    assert f"{search['int16_ops']} int16 (" in line and "1 float (" in line and "evaluations" in line


def test_emulated_int16_grid_tracks_litert_int16_kernels(case):
    """The 16x8 placement's switchable session with every switch on is the whole-model 16x8 .tflite
    within a few int16 steps of the tensor LiteRT writes (the Add before fc2), far closer than the
    int8 file is."""
    from edgepipe.accuracy.placement import SwitchableQdq
    from edgepipe.backends.tflite.build import INT8_FILE, build_tflite
    import tempfile
    from pathlib import Path

    from ai_edge_litert.interpreter import Interpreter

    model, calibration, dataset = case
    placement = ARM.int16_placement(model, calibration, NO_RULE)
    assert "shift_add" in placement.int16_nodes
    scale = placement.int16_grids["shifted"]  # symmetric over the observed range, not int8's clipped one
    assert scale == pytest.approx(calibration.tensors["shifted"].max / 32767, rel=1e-3)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("shifted", TensorProto.FLOAT, [1, WIDTH]))
    emulation = SwitchableQdq(probe, placement, ["shifted"])
    feeds = [dataset.sample(i) for i in range(16)]
    every_node = {n.name for n in model.graph.node}
    on = emulation.switches_for(set(), every_node)
    assert "shifted::int16" in on and "shifted::int8" not in on
    emulated = emulation.run(feeds, on)[0]
    with tempfile.TemporaryDirectory() as tmp:
        build_tflite(model, calibration, Path(tmp), {"target": "arm-cpu", "activations": "int16", **NO_RULE})
        interpreter = Interpreter(model_path=str(Path(tmp) / INT8_FILE), experimental_preserve_all_tensors=True)
        interpreter.allocate_tensors()
        written = []
        for feed in feeds:
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], feed["x"])
            interpreter.invoke()
            detail = next(t for t in interpreter.get_tensor_details() if t["name"] == "shifted")
            assert detail["dtype"] == np.int16
            written.append(detail["quantization"][0] * interpreter.get_tensor(detail["index"]).astype(np.float32))
    litert = np.concatenate(written)
    assert np.max(np.abs(litert - emulated)) <= 4 * scale


@pytest.mark.parametrize(("depth", "levels"), [(3, ("int8", "float")), (12, ("int8", "float")),
                                               (12, ("int8", "int16", "float"))])
def test_search_evaluations_grow_with_log_n(tmp_path, depth, levels):
    model = elementwise_outlier_model(depth=depth)
    calibration = calibrated(model, tmp_path)
    dataset = npz_dataset(tmp_path, "eval", 64, seed=2)
    plan = plan_on_target(model, calibration, dataset, BUDGET, ARM, NO_RULE, levels=levels)
    search = plan.to_json()["search"]
    groups = search["groups"]
    assert groups >= 2 * depth  # every Mul/Add output is a candidate
    assert search["ranking_evaluations"] == groups + 1  # one pass: all int8, then each group alone
    if "int16" in levels:  # int8, int16, then at most two bisections (float prefix, int16 prefix)
        assert search["search_evaluations"] <= 2 * math.ceil(math.log2(groups)) + 4
    else:  # all int8 + the largest prefix + bisection + a bounded prune
        assert search["search_evaluations"] <= math.ceil(math.log2(groups)) + 2 + max(PRUNE_LIMIT, PRUNE_EVALUATIONS)
    # a backend disagreeing with the emulation doubles the float set (int16: first all non-float int16)
    assert search["confirm_evaluations"] <= 1 + ("int16" in levels) + math.ceil(math.log2(groups))
    assert plan.met, plan.reason


def test_sensitivity_ranks_with_the_targets_own_placement(tmp_path):
    """`edgepipe sensitivity` on arm-cpu scores the .tflite's own grids: the shifted elementwise
    tensor, which TensorRT's weighted-op placement has no group for, ranks first."""
    from edgepipe.accuracy.sensitivity import analyze_sensitivity

    model = elementwise_outlier_model()
    report = analyze_sensitivity(model, calibrated(model, tmp_path), npz_dataset(tmp_path, "eval", 32, seed=2),
                                 target=ARM, max_samples=32, backend=NO_RULE)
    assert "TFLite" in report.to_json()["placement"]
    top = report.nodes[0]
    assert top.group.activations == ("shifted",), report.text_table()
    assert top.only.sqnr_db < min(n.only.sqnr_db for n in report.nodes[1:])


def test_plan_refuses_the_int16_level_on_a_target_without_16x8(tmp_path):
    from edgepipe.accuracy.precision import plan_mixed_precision
    from edgepipe.errors import UserError
    from tests.test_sensitivity import GPU

    model = elementwise_outlier_model()
    with pytest.raises(UserError, match="precision.levels: target '.*' has no int16 activations"):
        plan_mixed_precision(model, calibrated(model, tmp_path), npz_dataset(tmp_path, "eval", 8, seed=2), BUDGET,
                             target=GPU, levels=("int8", "int16", "float"))
