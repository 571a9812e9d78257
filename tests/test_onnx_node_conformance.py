"""Every ONNX backend test whose ops a target claims, built through the CLI and judged against
the test's own expected outputs (tests/onnx_node_cases.py has the rules and tolerances).

Each case must end *matched* (fp32 within rtol 1e-4 and int8 within a few calibration-derived
output steps on arm-cpu; reference.onnx exact and Q/DQ within a few steps on jetson) or
*refused* (exit 2, one line naming the op or the input it cannot take, nothing written). A wrong
number or a crash fails the case by name. `python benchmarks/onnx_node_conformance.py` counts them.
"""

from __future__ import annotations

import functools

import pytest

from tests import onnx_node_cases

TARGETS = ("arm-cpu", "jetson")
# Wrong numbers found by this suite and not fixed yet: strict, so a fix makes the test fail until
# the entry is removed. Each is a bug, listed in the README, never a tolerance.
KNOWN_WRONG: dict[tuple[str, str], str] = {}


@functools.lru_cache(maxsize=1)
def _cases() -> list:
    return onnx_node_cases.collect_cases()


def _selected(target: str) -> list:
    """arm-cpu: every case it claims. jetson: the same cases where jetson claims them too (the
    TensorRT parser table claims far more; benchmarks/onnx_node_conformance.py runs all of those)."""
    return [case for case in _cases() if onnx_node_cases.claimed(case, "arm-cpu")
            and (target == "arm-cpu" or onnx_node_cases.claimed(case, target))]


def _params():
    for target in TARGETS:
        for case in _selected(target):
            known = KNOWN_WRONG.get((target, case.name))
            marks = [pytest.mark.xfail(strict=True, reason=known)] if known else []
            yield pytest.param(target, case, id=f"{target}-{case.source}-{case.name}", marks=marks)


def test_the_selection_is_the_claim():
    """Hundreds of cases over dozens of op types; a case outside the claim is never selected."""
    selected = _selected("arm-cpu")
    assert len(selected) >= 150
    assert len({op for case in selected for _, op in case.op_types}) >= 30
    assert all(onnx_node_cases.claimed(case, "arm-cpu") for case in _selected("jetson"))
    unclaimed = [case for case in _cases() if not onnx_node_cases.claimed(case, "arm-cpu")]
    assert any(op == "Loop" for case in unclaimed for _, op in case.op_types)


@pytest.mark.slow
@pytest.mark.parametrize(("target", "case"), list(_params()))
def test_onnx_backend_case(target, case, tmp_path):
    verdict = onnx_node_cases.run_case(case, target, tmp_path)
    assert verdict.status in ("matched", "refused"), f"{verdict.status}: {verdict.detail}"


def test_a_wrong_scale_in_a_built_file_is_a_mismatch(tmp_path):
    """The judge derives the int8 grids from calibration.json: a 40x output scale written into
    the bundle's model.tflite must come out as wrong numbers."""
    import numpy as np

    from edgepipe.backends.tflite.runtime import make_interpreter
    from tests.test_conformance_harness import corrupt_scale

    case = next(c for c in _cases() if c.name == "test_Conv2d")  # pytorch-converted: weights are initializers
    (name,) = case.outputs
    assert onnx_node_cases.run_case(case, "arm-cpu", tmp_path / "good").status == "matched"
    outcome = onnx_node_cases.build(case, "arm-cpu", tmp_path / "bad")
    path = outcome.bundle / "model.tflite"
    output = next(d["name"] for d in make_interpreter(path, "reference").get_tensor_details()
                  if d["dtype"] == np.int8 and d["name"].split(";")[0] == name)
    corrupt_scale(path, output, 40.0)
    verdict = onnx_node_cases.judge_arm_cpu(case, outcome.bundle)
    assert verdict.status == "mismatch" and verdict.errors[f"int8:{name}"] > 10


# jetson-only cases (outside the arm-cpu claim above) that crashed before: float16/float64 graphs
# whose Q/DQ ONNX did not load, zero-size outputs, a data-dependent CenterCropPad shape measured
# wrong, and expanded RMSNormalization refused naming a node onnxsim had fused
JETSON_ONLY_REGRESSIONS = (
    "test_attention_4d_fp16_expanded", "test_causal_conv_with_state_fp16_expanded",
    "test_causal_conv_with_state_silu_fp16_expanded", "test_flexattention_double_expanded_ver26",
    "test_flexattention_fp16_expanded_ver26", "test_shape_start_greater_than_end",
    "test_center_crop_pad_pad_expanded", "test_center_crop_pad_crop_and_pad_expanded",
    "test_rms_normalization_2d_axis1_expanded", "test_rms_normalization_default_axis_expanded",
)


@pytest.mark.slow
@pytest.mark.parametrize("name", JETSON_ONLY_REGRESSIONS)
def test_jetson_only_regressions(name, tmp_path):
    (case,) = [c for c in _cases() if c.name == name]
    assert onnx_node_cases.claimed(case, "jetson")
    verdict = onnx_node_cases.run_case(case, "jetson", tmp_path)
    assert verdict.status in ("matched", "refused"), f"{verdict.status}: {verdict.detail}"
    if name.startswith(("test_center_crop", "test_rms", "test_shape")):
        assert verdict.status == "matched", verdict.detail


# control flow, which TensorRT's parser imports and arm-cpu refuses: Loop with a scan output and a
# trip count fed at run time, If on a graph input, Scan-9 (one and two states), Scan inside
# expanded linear attention, If inside expanded AffineGrid; each must match. The expanded 3-D
# align-corners AffineGrid has an If whose branches differ in rank (TensorRT refuses that): refused.
CONTROL_FLOW_CASES = {
    "test_loop11": "matched", "test_if": "matched", "test_scan9_sum": "matched",
    "test_scan9_multi_state": "matched", "test_linear_attention_gated_delta_expanded": "matched",
    "test_affine_grid_2d_expanded": "matched", "test_affine_grid_3d_align_corners_expanded": "refused",
}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "status"), sorted(CONTROL_FLOW_CASES.items()))
def test_control_flow_cases_on_jetson(name, status, tmp_path):
    (case,) = [c for c in _cases() if c.name == name]
    assert onnx_node_cases.claimed(case, "jetson") and not onnx_node_cases.claimed(case, "arm-cpu")
    verdict = onnx_node_cases.run_case(case, "jetson", tmp_path)
    assert verdict.status == status, verdict.detail
    if status == "refused":
        assert "(If)" in verdict.detail and "rank" in verdict.detail


def test_scan8_is_outside_the_parser_claim():
    """Scan-8 (batch axis) predates TensorRT 10's opset range: not claimed, so never built."""
    (case,) = [c for c in _cases() if c.name == "test_scan_sum"]
    assert not onnx_node_cases.claimed(case, "jetson")

