"""Input normalization / whitening folding: exact with padding, strides and auto_pad."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe.errors import UserError
from edgepipe.fold.normalization import estimate_whitening, fold_conv_weights, fold_input_normalization
from edgepipe.graph import make_session

C, H, W = 3, 9, 9


def raw_samples(count: int, seed: int = 0) -> list[np.ndarray]:
    """Correlated channels with large, unequal means, like raw 0..255 pixels."""
    rng = np.random.default_rng(seed)
    mixing = np.array([[40.0, 0, 0], [25.0, 20.0, 0], [10.0, -15.0, 8.0]])
    offset = np.array([120.0, 90.0, 60.0])
    out = []
    for _ in range(count):
        z = rng.standard_normal((C, H * W))
        out.append((mixing @ z + offset[:, None]).reshape(1, C, H, W).astype(np.float32))
    return out


def conv_model(skip: bool = False, kernel: int = 3, **conv_attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((4 if not skip else C, C, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(weight.shape[0]).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], name="conv0", **conv_attrs)]
    if skip:
        nodes.append(helper.make_node("Add", ["h", "x"], ["s"], name="skip"))
    nodes.append(helper.make_node("Relu", ["s" if skip else "h"], ["y"], name="relu"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def check_inputs(mu: np.ndarray) -> list[np.ndarray]:
    """Fresh random raw samples plus structured ones: the mean image, a ramp, a hard edge."""
    ramp = np.linspace(0, 255, C * H * W, dtype=np.float32).reshape(1, C, H, W)
    edge = np.zeros((1, C, H, W), np.float32)
    edge[..., : W // 2] = 255.0
    mean_image = np.broadcast_to(mu.reshape(1, C, 1, 1), (1, C, H, W)).astype(np.float32)
    return raw_samples(3, seed=99) + [ramp, edge, mean_image]


def relative_diff(original, folded, report) -> float:
    """max |original(M (x - mu)) - folded(x)| / output scale over the check inputs."""
    matrix, mu = np.array(report["M"]), np.array(report["mu"])
    ref_session, new_session = make_session(original), make_session(folded)
    worst = 0.0
    for x in check_inputs(mu):
        normalized = np.einsum("jc,nc...->nj...", matrix, x.astype(np.float64) - mu.reshape(1, C, 1, 1))
        ref = ref_session.run(None, {"x": normalized.astype(np.float32)})[0]
        got = new_session.run(None, {"x": x})[0]
        worst = max(worst, float(np.max(np.abs(ref - got)) / max(1.0, float(np.max(np.abs(ref))))))
    return worst


def naive_fold(model: onnx.ModelProto, report: dict) -> onnx.ModelProto:
    """Weights folded but the conv keeps zero-padding the raw input (the bug the fold avoids)."""
    naive = onnx.ModelProto()
    naive.CopyFrom(model)
    inits = {t.name: numpy_helper.to_array(t) for t in naive.graph.initializer}
    weight, bias = fold_conv_weights(inits["w"], inits["b"], np.array(report["M"]), np.array(report["mu"]))
    del naive.graph.initializer[:]
    naive.graph.initializer.extend(
        [numpy_helper.from_array(weight.astype(np.float32), "w"), numpy_helper.from_array(bias.astype(np.float32), "b")]
    )
    return naive


CONV_CASES = {
    "pad1": dict(pads=[1, 1, 1, 1]),
    "pad2_stride2": dict(pads=[2, 2, 2, 2], strides=[2, 2]),
    # an even kernel makes the total SAME padding odd (3), so UPPER and LOWER differ
    "same_upper": dict(auto_pad="SAME_UPPER", kernel=4),
    "same_lower": dict(auto_pad="SAME_LOWER", kernel=4, strides=[2, 2]),
}


@pytest.mark.parametrize("mode", ["mean_std", "zca", "pca"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_fold_is_exact_and_naive_fold_is_not(mode, case):
    original = conv_model(**CONV_CASES[case])
    folded, report = fold_input_normalization(original, "x", mode, samples=iter(raw_samples(6)))
    assert report["folded_into"] == "conv0" and report["fallback"] is None
    assert [n.op_type for n in folded.graph.node] == ["Pad", "Add", "Conv", "Relu"]
    assert [i.name for i in folded.graph.input] == ["x"] and [o.name for o in folded.graph.output] == ["y"]
    assert relative_diff(original, folded, report) <= 1e-4
    assert relative_diff(original, naive_fold(original, report), report) > 1e-2


def test_equal_means_use_one_pad_with_constant_value():
    original = conv_model(pads=[1, 1, 1, 1])
    folded, report = fold_input_normalization(original, "x", "mean_std", mean=[0.5], std=[0.25, 0.5, 0.2])
    assert [n.op_type for n in folded.graph.node] == ["Pad", "Conv", "Relu"]
    assert report["mu"] == [0.5, 0.5, 0.5] and report["source"] == "settings"
    assert relative_diff(original, folded, report) <= 1e-4


def test_unpadded_conv_needs_no_pad():
    original = conv_model(auto_pad="VALID")
    folded, report = fold_input_normalization(original, "x", "zca", samples=raw_samples(4))
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu"]
    assert relative_diff(original, folded, report) <= 1e-4


@pytest.mark.parametrize("mode", ["mean_std", "zca"])
def test_input_with_skip_connection_falls_back_to_explicit_nodes(mode):
    original = conv_model(skip=True, pads=[1, 1, 1, 1])
    folded, report = fold_input_normalization(original, "x", mode, samples=raw_samples(4))
    assert report["folded_into"] is None and "2 node(s)" in report["fallback"]
    expected_mix = "Mul" if mode == "mean_std" else "Conv"
    assert [n.op_type for n in folded.graph.node][:2] == ["Sub", expected_mix]
    assert relative_diff(original, folded, report) <= 1e-4


def test_whitening_estimate_matches_numpy():
    samples = raw_samples(5, seed=3)
    pixels = np.concatenate([s.reshape(C, -1) for s in samples], axis=1).astype(np.float64)
    expected_cov = np.cov(pixels, bias=True)
    for mode in ("mean_std", "zca", "pca"):
        matrix, mu, info = estimate_whitening(iter(samples), mode, eps=0.0)
        np.testing.assert_allclose(mu, pixels.mean(axis=1), rtol=1e-10)
        np.testing.assert_allclose(np.array(info["covariance"]), expected_cov, rtol=1e-9)
        assert info["condition_number"] == pytest.approx(np.linalg.cond(expected_cov), rel=1e-6)
        whitened = matrix @ expected_cov @ matrix.T
        if mode == "mean_std":
            np.testing.assert_allclose(np.diag(whitened), np.ones(C), rtol=1e-9)
        else:
            np.testing.assert_allclose(whitened, np.eye(C), atol=1e-9)
    zca, _, _ = estimate_whitening(samples, "zca", eps=0.0)
    np.testing.assert_allclose(zca, zca.T, atol=1e-12)


def test_bad_settings_are_user_errors():
    model = conv_model(pads=[1, 1, 1, 1])
    with pytest.raises(UserError, match="no input 'image'"):
        fold_input_normalization(model, "image", "mean_std", mean=[0.0], std=[1.0])
    with pytest.raises(UserError, match="positive"):
        fold_input_normalization(model, "x", "mean_std", mean=[0.0], std=[1.0, 0.0, 1.0])
    with pytest.raises(UserError, match="needs calibration samples"):
        fold_input_normalization(model, "x", "zca")
