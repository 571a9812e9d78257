"""Calibration robustness: the failure mode found on real models, on a tiny constructed graph.

On the PP-OCRv4 recognizer (benchmarks/calibration_real_models.py) entropy calibration collapses
(CTC string agreement with FP32 0.0, output SQNR ~1 dB): it clips the rare large values of
activations whose bulk sits near zero (hardswish/residual Add outputs feeding Conv/MatMul), and
those rare values carry the decision. Here: a MatMul whose input is mostly small noise plus one
"outlier channel" whose magnitude decides the argmax of the logits (the way a LayerNorm outlier
channel or a winning logit does). `auto` must not take entropy's threshold there.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph
from edgepipe.backends.qdq import write_qdq_model
from edgepipe.calibrate import calibrate
from edgepipe.calibrate.methods.entropy import candidate_divergence, candidate_divergences, entropy_amax

CHANNELS, CLASSES = 64, 9


def outlier_channel_model() -> onnx.ModelProto:
    """logits[k] = k * x[0] - k^2 / 2 (+ tiny weights on the noise channels): argmax = round(x[0])."""
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.01, (CHANNELS, CLASSES)).astype(np.float32)
    weight[0] = np.arange(CLASSES, dtype=np.float32)
    bias = (-np.arange(CLASSES, dtype=np.float32) ** 2 / 2).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["logits"], name="bias")]
    g = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])],
                          [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def outlier_inputs(count: int, seed: int) -> np.ndarray:
    """Bulk ~ N(0, 0.05); channel 0 carries the decisive value, uniform in [0.5, 8]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.05, (count, CHANNELS)).astype(np.float32)
    x[:, 0] = rng.uniform(0.5, 8.0, count)
    return x


class Arrays:
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def sample(self, i):
        return {"x": self.x[i : i + 1]}


def argmax_agreement(model, qdq, x) -> float:
    ref, test = graph.make_session(model), graph.make_session(qdq)
    a = np.concatenate([ref.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))]).argmax(1)
    b = np.concatenate([test.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))]).argmax(1)
    return float(np.mean(a == b))


@pytest.fixture(scope="module")
def outlier_case():
    model = outlier_channel_model()
    calib, held_out = outlier_inputs(64, 1), outlier_inputs(200, 2)
    results = {m: calibrate(model, Arrays(calib), {"method": m, "rounds": 1}) for m in ("auto", "entropy")}
    agreement = {m: argmax_agreement(model, write_qdq_model(model, r)[0], held_out) for m, r in results.items()}
    return results, agreement


def test_entropy_clips_the_decisive_outlier_channel(outlier_case):
    """The bad rule reproduces: entropy's threshold sits in the bulk and the argmax collapses."""
    results, agreement = outlier_case
    x = results["entropy"].tensors["x"]
    assert x.amax < 0.5 * x.max
    assert agreement["entropy"] < 0.75


def test_auto_keeps_the_outlier_channel(outlier_case):
    results, agreement = outlier_case
    chosen = results["auto"].tensors["x"]
    assert chosen.method != "entropy"
    assert chosen.amax >= 0.9 * chosen.max  # the decisive values are not clipped
    assert agreement["auto"] >= 0.95
    assert agreement["auto"] > agreement["entropy"] + 0.2


# --- the vectorized entropy search against the per-candidate loop ---------------------------


@pytest.mark.parametrize("seed", range(8))
def test_closed_form_divergences_match_the_per_candidate_loop(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.choice([200, 700, 2048]))
    hist = np.rint(rng.exponential(1.0, size) * rng.choice([3, 1e3, 1e6])
                   * np.exp(-np.arange(size) / rng.uniform(5, 400))).astype(np.float64)
    hist[rng.random(size) < rng.choice([0.0, 0.3, 0.8])] = 0
    hist[-1] += 1 + rng.integers(0, 3)
    hist[0] = hist[1]
    candidates = np.arange(128, size + 1)
    fast = candidate_divergences(hist, candidates)
    loop = np.array([candidate_divergence(hist, i) for i in candidates])
    assert np.array_equal(np.isfinite(fast), np.isfinite(loop))
    finite = np.isfinite(loop)
    np.testing.assert_allclose(fast[finite], loop[finite], rtol=1e-9, atol=1e-12)


def test_fractional_counts_fall_back_to_the_loop():
    hist = np.exp(-np.arange(400) / 50.0)  # counts below 1: the expansion does not apply
    assert candidate_divergences(hist, np.arange(128, 401)) is None
    expected = max((i for i in range(128, 401)), key=lambda i: (-candidate_divergence(np.r_[hist[1], hist[1:]], i), i))
    assert entropy_amax(hist, 1.0) == expected
