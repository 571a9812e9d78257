"""Temperature scaling: the fit recovers a known T, ECE is right, and the fold equals logits/T."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe.errors import UserError
from edgepipe.fold.temperature import (
    expected_calibration_error,
    fit_temperature,
    fold_temperature,
    negative_log_likelihood,
    softmax,
)
from edgepipe.graph import make_session


def synthetic_logits(true_temperature: float, n: int = 20000, classes: int = 10, seed: int = 0):
    """Labels drawn from softmax(logits / T): the NLL-optimal temperature is then T itself."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, classes)) * 3.0
    probs = softmax(logits / true_temperature)
    labels = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    return logits, np.minimum(labels, classes - 1)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_recovers_known_temperature(true_temperature):
    logits, labels = synthetic_logits(true_temperature)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.06)
    best = negative_log_likelihood(logits, labels, fitted)
    for other in (fitted * 0.9, fitted * 1.1):
        assert negative_log_likelihood(logits, labels, other) > best


def test_fit_clamps_to_bounds():
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])
    assert fit_temperature(logits, np.array([0, 1])) == 0.05  # perfectly separable: sharpen fully
    assert fit_temperature(logits, np.array([1, 0])) == 20.0  # always wrong: flatten fully


def test_ece_hand_computed():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])
    # 2 bins: (0, .5] is empty (max prob >= .5); (.5, 1] holds all 4: confidences .9 .8 .7 .55
    # (mean .7375), correct 1 0 1 1 (accuracy .75) -> ECE = |.75 - .7375| = .0125
    assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(0.0125)
    # 10 bins: (.8,.9] {.9 ok}, (.7,.8] {.8 wrong}, (.6,.7] {.7 ok}, (.5,.6] {.55 ok}
    expected = 0.25 * (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.55))
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(expected)


def classifier(head: str) -> onnx.ModelProto:
    """x [2, 6] -> linear head -> Softmax; head is gemm | matmul_add | relu (non-linear last op)."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((6, 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    if head == "gemm":
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logits"], name="fc")]
    else:
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["mm"], name="fc"),
            helper.make_node("Add", ["mm", "b"], ["logits" if head == "matmul_add" else "pre"], name="fc_bias"),
        ]
        if head == "relu":
            nodes.append(helper.make_node("Relu", ["pre"], ["logits"], name="act"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [2, 5])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("head,method", [("gemm", "weights"), ("matmul_add", "weights"), ("relu", "mul")])
def test_fold_equals_softmax_of_scaled_logits(head, method):
    temperature = 2.7
    original = classifier(head)
    folded, report = fold_temperature(original, temperature)
    assert report["method"] == method and report["logits"] == "logits"
    assert [o.name for o in folded.graph.output] == ["probs"]
    if method == "weights":
        assert "Mul" not in [n.op_type for n in folded.graph.node]
    logits_model = onnx.ModelProto()
    logits_model.CopyFrom(original)
    logits_model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, None))
    rng = np.random.default_rng(5)
    for x in (rng.standard_normal((2, 6)).astype(np.float32), np.full((2, 6), 3.0, np.float32)):
        probs, logits = make_session(logits_model).run(None, {"x": x})
        got = make_session(folded).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, softmax(logits / temperature), atol=1e-6)
        assert np.array_equal(got.argmax(axis=1), probs.argmax(axis=1))
        assert not np.allclose(got, probs, atol=1e-3)  # T really changed the probabilities


def test_fold_without_softmax_scales_the_output():
    model = classifier("gemm")
    del model.graph.node[-1]
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 5]))
    folded, report = fold_temperature(model, 0.5)
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6)
    ref, got = make_session(model).run(None, {"x": x})[0], make_session(folded).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref / 0.5, rtol=1e-5, atol=1e-6)


def test_bad_temperature_is_user_error():
    with pytest.raises(UserError, match="positive"):
        fold_temperature(classifier("gemm"), 0.0)
