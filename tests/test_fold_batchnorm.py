"""BatchNorm folding is exact: folded and unfolded graphs agree in ONNX Runtime."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgepipe.fold.batchnorm import fold_batchnorm
from edgepipe.graph import make_session


def export(module: torch.nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    module.eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        module, torch.zeros(shape), buffer, dynamo=False, do_constant_folding=False,
        input_names=["x"], output_names=["y"], opset_version=17,
    )
    return onnx.load_from_string(buffer.getvalue())


def randomize_batchnorms(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial running stats so an unfolded or wrongly folded BN cannot pass by accident."""
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=generator) * 2)
            bn.running_var.copy_(torch.rand(n, generator=generator) * 3 + 0.05)
            bn.weight.data.copy_(torch.randn(n, generator=generator))
            bn.bias.data.copy_(torch.randn(n, generator=generator))
            bn.eps = 1e-3
    return module


def sample_inputs(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Random and structured inputs: gaussian, a ramp, a constant plane and a checkerboard."""
    rng = np.random.default_rng(1)
    size = int(np.prod(shape))
    ramp = np.linspace(-3, 3, size, dtype=np.float32).reshape(shape)
    checker = (np.indices(shape).sum(axis=0) % 2 * 2 - 1).astype(np.float32)
    return [rng.standard_normal(shape).astype(np.float32), ramp, np.full(shape, 0.7, np.float32), checker]


def assert_same_outputs(original: onnx.ModelProto, folded: onnx.ModelProto, shape) -> float:
    ref_session, new_session = make_session(original), make_session(folded)
    name = original.graph.input[0].name
    worst = 0.0
    for x in sample_inputs(shape):
        ref = ref_session.run(None, {name: x})[0]
        got = new_session.run(None, {name: x})[0]
        diff = float(np.max(np.abs(ref - got)))
        assert diff <= 1e-4 * max(1.0, float(np.max(np.abs(ref)))), diff
        worst = max(worst, diff)
    return worst


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


CONV_CASES = {
    "bias": dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
    "no_bias": dict(in_channels=3, out_channels=8, kernel_size=3, padding=1, bias=False),
    "grouped": dict(in_channels=8, out_channels=12, kernel_size=3, padding=1, groups=4),
    "depthwise": dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8, bias=False),
    "dilated": dict(in_channels=3, out_channels=6, kernel_size=3, padding=2, dilation=2),
    "strided": dict(in_channels=3, out_channels=6, kernel_size=3, stride=2),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_bn_folds_exactly(case):
    kwargs = CONV_CASES[case]
    module = randomize_batchnorms(
        torch.nn.Sequential(torch.nn.Conv2d(**kwargs), torch.nn.BatchNorm2d(kwargs["out_channels"]), torch.nn.ReLU())
    )
    shape = (1, kwargs["in_channels"], 9, 9)
    original = export(module, shape)
    assert "BatchNormalization" in op_types(original)
    folded, report = fold_batchnorm(original)
    assert "BatchNormalization" not in op_types(folded)
    assert op_types(folded) == ["Conv", "Relu"]
    assert [entry["op_type"] for entry in report["folded"]] == ["Conv"]
    assert_same_outputs(original, folded, shape)
    # the BN really changes the output: a graph that merely dropped it fails the same check
    dropped = onnx.ModelProto()
    dropped.CopyFrom(original)
    bn = [n for n in dropped.graph.node if n.op_type == "BatchNormalization"][0]
    dropped.graph.node[0].output[0] = bn.output[0]
    dropped.graph.node.remove(bn)
    with pytest.raises(AssertionError):
        assert_same_outputs(original, dropped, shape)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_bn_folds_with_groups(groups):
    module = randomize_batchnorms(
        torch.nn.Sequential(
            torch.nn.ConvTranspose2d(4, 6, kernel_size=3, stride=2, padding=1, groups=groups, bias=groups == 1),
            torch.nn.BatchNorm2d(6),
        )
    )
    shape = (1, 4, 5, 5)
    original = export(module, shape)
    folded, report = fold_batchnorm(original)
    assert op_types(folded) == ["ConvTranspose"]
    assert report["folded"][0]["op_type"] == "ConvTranspose"
    assert_same_outputs(original, folded, shape)


def test_linear_bn_folds_into_gemm_trans_b():
    module = randomize_batchnorms(torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7)))
    original = export(module, (3, 5))
    gemm = [n for n in original.graph.node if n.op_type == "Gemm"][0]
    assert helper.get_attribute_value([a for a in gemm.attribute if a.name == "transB"][0]) == 1
    folded, report = fold_batchnorm(original)
    assert op_types(folded) == ["Gemm"]
    assert_same_outputs(original, folded, (3, 5))


def gemm_bn_graph(with_c: bool, beta: float) -> onnx.ModelProto:
    """Gemm with transB=0 (weights [K, N]) and a non-unit alpha/beta, then BN, built by hand."""
    rng = np.random.default_rng(3)
    k, n = 4, 6
    inits = [
        numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "C"),
        numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "beta_bn"),
        numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "mean"),
        numpy_helper.from_array((rng.random(n) + 0.1).astype(np.float32), "var"),
    ]
    gemm_inputs = ["x", "B", "C"] if with_c else ["x", "B"]
    nodes = [
        helper.make_node("Gemm", gemm_inputs, ["h"], name="gemm", alpha=0.5, beta=beta, transB=0),
        helper.make_node("BatchNormalization", ["h", "gamma", "beta_bn", "mean", "var"], ["y"], name="bn", epsilon=1e-4),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("with_c,beta", [(True, 1.0), (True, 2.5), (False, 1.0)])
def test_gemm_trans_b0_bn_folds(with_c, beta):
    original = gemm_bn_graph(with_c, beta)
    folded, _ = fold_batchnorm(original)
    assert op_types(folded) == ["Gemm"]
    assert_same_outputs(original, folded, (2, 4))


def test_standalone_bn_becomes_mul_add():
    module = randomize_batchnorms(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm2d(3)))
    shape = (1, 3, 6, 6)
    original = export(module, shape)
    folded, report = fold_batchnorm(original)
    assert op_types(folded) == ["Relu", "Mul", "Add"]
    assert report["replaced_by_mul_add"] and not report["folded"]
    scale = [t for t in folded.graph.initializer if t.name.endswith("_scale")][0]
    assert list(scale.dims) == [1, 3, 1, 1]
    assert [o.name for o in folded.graph.output] == ["y"]
    assert_same_outputs(original, folded, shape)


class ConvWithSkip(torch.nn.Module):
    """The conv output is also read by a skip connection, so the BN must not change the conv."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        h = self.conv(x)
        return self.bn(h) + h


def test_shared_conv_output_is_not_folded_into():
    module = randomize_batchnorms(ConvWithSkip())
    shape = (1, 3, 5, 5)
    original = export(module, shape)
    folded, report = fold_batchnorm(original)
    assert not report["folded"] and report["replaced_by_mul_add"]
    assert_same_outputs(original, folded, shape)


# --- the fold stage end to end (run_fold chains BN -> whitening -> temperature) ---------------


class StandInDataset:
    """The Dataset contract of docs/ARCHITECTURE.md, reduced to what run_fold reads."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray | None):
        self.inputs, self.labels, self.names = inputs, labels, ["x"]

    def __len__(self):
        return len(self.inputs)

    def sample(self, i):
        return {"x": self.inputs[i : i + 1]}


def small_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorms(
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 4), torch.nn.Softmax(dim=1),
        )
    )


def raw_dataset(count: int, seed: int, labelled: bool = True) -> StandInDataset:
    rng = np.random.default_rng(seed)
    inputs = (rng.standard_normal((count, 3, 8, 8)) * [[[40.0]], [[20.0]], [[10.0]]] + [[[120.0]], [[80.0]], [[40.0]]])
    labels = rng.integers(0, 4, count) if labelled else None
    return StandInDataset(inputs.astype(np.float32), labels)


def test_run_fold_chains_all_folds_on_raw_input():
    from edgepipe.fold.temperature import softmax
    from edgepipe.stages.fold import run_fold

    original = export(small_classifier(), (1, 3, 8, 8))
    settings = {"input_normalization": "zca", "temperature": "auto"}
    folded, report = run_fold(original, settings, raw_dataset(12, 1), raw_dataset(40, 2))
    assert [entry["op_type"] for entry in report["batchnorm"]["folded"]] == ["Conv"]
    assert report["input_normalization"]["folded_into"] and report["input_normalization"]["condition_number"] > 1
    temperature = report["temperature"]["temperature"]
    assert 0.05 <= temperature <= 20 and report["temperature"]["method"] == "weights"
    # T minimizes the NLL over a range that includes T = 1; ECE need not drop on 40 random labels
    assert report["temperature"]["nll_after"] <= report["temperature"]["nll_before"]
    assert 0 <= report["temperature"]["ece_after"] <= 1
    for key in ("batchnorm", "input_normalization", "temperature"):
        assert report[key]["max_rel_diff"] <= 1e-4
    # independent check: folded(raw) == softmax(logits(original(M (raw - mu))) / T)
    matrix, mu = np.array(report["input_normalization"]["M"]), np.array(report["input_normalization"]["mu"])
    raw = raw_dataset(3, 9).inputs
    normalized = np.einsum("jc,nc...->nj...", matrix, raw - mu.reshape(1, 3, 1, 1)).astype(np.float32)
    logits_name = [n for n in original.graph.node if n.op_type == "Softmax"][0].input[0]
    with_logits = onnx.ModelProto()
    with_logits.CopyFrom(original)
    with_logits.graph.output.append(helper.make_tensor_value_info(logits_name, TensorProto.FLOAT, None))
    session, folded_session = make_session(with_logits), make_session(folded)
    for i in range(3):
        logits = session.run(None, {"x": normalized[i : i + 1]})[1]
        got = folded_session.run(None, {"x": raw[i : i + 1]})[0]
        np.testing.assert_allclose(got, softmax(logits / temperature), atol=1e-5)


def test_run_fold_user_errors_and_self_check(monkeypatch):
    from edgepipe.errors import UserError
    from edgepipe.stages import fold as fold_stage

    original = export(small_classifier(), (1, 3, 8, 8))
    with pytest.raises(UserError, match="labels"):
        fold_stage.run_fold(original, {"temperature": "auto"}, eval_dataset=raw_dataset(4, 1, labelled=False))
    with pytest.raises(UserError, match="calibration dataset"):
        fold_stage.run_fold(original, {"input_normalization": "pca"})
    with pytest.raises(UserError, match="unknown key"):
        fold_stage.run_fold(original, {"batchnrom": True})

    def drop_batchnorm(model):  # a broken fold: the self-check must catch it
        broken = onnx.ModelProto()
        broken.CopyFrom(model)
        bn = [n for n in broken.graph.node if n.op_type == "BatchNormalization"][0]
        [n for n in broken.graph.node if bn.input[0] in n.output][0].output[0] = bn.output[0]
        broken.graph.node.remove(bn)
        return broken, {}

    monkeypatch.setattr(fold_stage, "fold_batchnorm", drop_batchnorm)
    with pytest.raises(fold_stage.FoldCheckError, match="batchnorm"):
        fold_stage.run_fold(original, {})


def test_fold_checks_run_each_model_once_per_feed(monkeypatch):
    """The chain's checks run the unfolded model once per check feed (its synthetic-feed test and
    the first fold's reference share one session) and a verified fold's outputs are the next
    fold's reference; the reported differences are those of fresh sessions on the same feeds."""
    from edgepipe.fold.affine import fold_constant_affine
    from edgepipe.stages import fold as fold_stage

    class ScaledAfterBatchNorm(torch.nn.Module):  # BN, then a constant scale the affine fold takes
        def __init__(self):
            super().__init__()
            self.body = small_classifier()

        def forward(self, x):
            x = self.body[1](self.body[0](x)) * torch.linspace(0.5, 2.0, 6).reshape(1, 6, 1, 1)
            return self.body[2:](x)

    original = export(ScaledAfterBatchNorm(), (1, 3, 8, 8))
    calib, evaluation = raw_dataset(6, 1), raw_dataset(6, 2)
    runs: dict[bytes, int] = {}  # model bytes -> runs
    real_session = fold_stage.make_session

    class Counted:
        def __init__(self, model):
            self.key, self.session = model.SerializeToString(), real_session(model)

        def run(self, *args):
            runs[self.key] = runs.get(self.key, 0) + 1
            return self.session.run(*args)

    monkeypatch.setattr(fold_stage, "make_session", Counted)
    settings = {"constant_affine": True, "split_before_concat": False}
    folded, report = fold_stage.run_fold(original, settings, calib, evaluation)
    feeds = fold_stage._check_feeds(original, [calib, evaluation], 2)
    assert len(feeds) == 6  # gaussian, ramp, 2 + 2 samples
    after_bn, _ = fold_batchnorm(original)
    assert runs.pop(original.SerializeToString()) == 6 + 2  # run_fold, then _check_feeds above (its 2 tests)
    assert runs.pop(after_bn.SerializeToString()) == 6
    assert report["constant_affine"]["nodes_removed"] and runs.pop(folded.SerializeToString()) == 6 and not runs
    assert fold_constant_affine(after_bn)[0].SerializeToString() == folded.SerializeToString()
    for reference, candidate, key in ((original, after_bn, "batchnorm"), (after_bn, folded, "constant_affine")):
        expected = [real_session(reference).run(None, feed) for feed in feeds]
        got = [real_session(candidate).run(None, feed) for feed in feeds]
        assert report[key]["max_rel_diff"] == fold_stage._check(key, expected, got, {"check_tolerance": 1e-3})
