"""QAT + distillation: the loss formula, STE gradients, the weight grid, and a toy fine-tune."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgepipe import graph, quantmath
from edgepipe.calibrate import calibrate
from edgepipe.data import load_dataset
from edgepipe.errors import UserError
from edgepipe.accuracy.qat import (LearnedActivationQuant, PerChannelWeightQuant, distillation_loss, fake_quantize, finetune,
                          learned_calibration, map_to_onnx, prepare_qat, strip_qat)
from edgepipe.accuracy.sensitivity import VariantEvaluator
from edgepipe.targets import load_target
from edgepipe.stages.export import export_torch


def test_distillation_loss_matches_numpy():
    student = np.array([[1.0, 2.0, 0.5], [0.1, -1.0, 3.0]])
    teacher = np.array([[2.0, 1.0, 0.0], [0.0, 0.5, 2.5]])
    labels = np.array([1, 2])
    alpha, T = 0.3, 2.0

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ce = -np.mean(np.log(softmax(student)[np.arange(2), labels]))
    p_t, p_s = softmax(teacher / T), softmax(student / T)
    kl = np.sum(p_t * (np.log(p_t) - np.log(p_s))) / 2  # batchmean
    expected = alpha * ce + (1 - alpha) * T * T * kl
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), alpha, T)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    no_labels = distillation_loss(torch.tensor(student), torch.tensor(teacher), None, alpha, T)
    assert float(no_labels) == pytest.approx(T * T * kl, rel=1e-9)


def test_straight_through_gradients():
    x = torch.tensor([-3.0, -0.26, 0.0, 0.74, 1.2, 5.0], requires_grad=True)
    scale = torch.tensor(0.01)
    fake_quantize(x, scale, -128, 127).sum().backward()
    inside = (x.detach() / scale >= -128) & (x.detach() / scale <= 127)
    assert torch.equal(x.grad, inside.float())  # identity inside the grid, zero where clipped
    quantizer = LearnedActivationQuant(amax=1.0)
    y = torch.randn(4, 8, requires_grad=True)
    (quantizer(y * 2) ** 2).sum().backward()
    assert y.grad.abs().sum() > 0 and quantizer.scale.grad is not None and quantizer.scale.grad != 0


def test_per_channel_weight_grid_matches_quantmath():
    w = torch.randn(6, 3, 3, 3)
    w[2] *= 40.0  # an outlier channel only coarsens its own grid
    q, scales = quantmath.per_channel_symmetric(w.numpy(), axis=0)
    expected = quantmath.dequantize(q, scales.reshape(-1, 1, 1, 1))
    np.testing.assert_allclose(PerChannelWeightQuant()(w).numpy(), expected, rtol=1e-6, atol=1e-7)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _toy_data(tmp_path, name, count, seed):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).standard_normal((4, 16)) * 0.6  # overlapping classes: ~78% FP32
    labels = rng.integers(0, 4, count)
    x = (centers[labels] + rng.standard_normal((count, 16))).astype(np.float32)
    np.savez(tmp_path / f"{name}.npz", x=x, labels=labels)
    return load_dataset(tmp_path / f"{name}.npz", {"x": ((1, 16), np.float32)})


def test_qat_finetune_is_not_worse_than_ptq(tmp_path):
    torch.manual_seed(0)
    train, calib, evaluation = (_toy_data(tmp_path, n, c, s) for n, c, s in
                                (("train", 512, 1), ("calib", 64, 2), ("eval", 256, 3)))
    model = Mlp()
    finetune(model, train, epochs=15, lr=1e-2, alpha=1.0, T=1.0, teacher=Mlp().eval())  # float training (CE only)
    with torch.no_grad():  # an FP32-neutral outlier channel feeding fc2: hard for per-tensor INT8
        model.fc1.weight[0] *= 200.0
        model.fc1.bias[0] = model.fc1.bias[0].abs() * 200.0
        model.fc2.weight[:, 0] /= 200.0

    onnx_model = graph.ensure_node_names(export_torch(model, {"x": [1, 16]}, ["logits"], 17))
    calibration = calibrate(onnx_model, calib, {"rounds": 2})
    ptq = VariantEvaluator(onnx_model, calibration, evaluation, target=load_target("desktop-gpu"),
                           max_samples=None).evaluate(set())

    prepare_qat(model, calibration, onnx_model=onnx_model)
    assert model.fc2.input_quantizer.amax == pytest.approx(calibration.tensors[map_to_onnx(model, onnx_model)[1][2]].amax)
    model, history = finetune(model, train, epochs=8, lr=5e-3, alpha=0.5, T=2.0)
    assert len(history) == 8 and all(np.isfinite(h["loss"]) for h in history)
    qat_calibration = learned_calibration(model, onnx_model, base=calibration)
    strip_qat(model)
    assert set(model.state_dict()) == set(Mlp().state_dict())  # plain keys again
    exported = graph.ensure_node_names(export_torch(model, {"x": [1, 16]}, ["logits"], 17))
    mapped = [tensor for _, _, tensor in map_to_onnx(model, exported)]
    assert all(qat_calibration.tensors[t].method == "qat-lsq" for t in mapped[1:])
    assert qat_calibration.tensors[mapped[0]].method != "qat-lsq"  # graph input keeps its calibration
    qat = VariantEvaluator(exported, qat_calibration, evaluation, target=load_target("desktop-gpu"),
                           max_samples=None).evaluate(set())
    assert ptq.top1 < ptq.fp32_top1  # the outlier really costs PTQ accuracy
    assert qat.top1 >= ptq.top1


def test_mapping_refuses_a_different_graph():
    onnx_model = graph.ensure_node_names(export_torch(Mlp(), {"x": [1, 16]}, ["logits"], 17))
    other = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 32), nn.Linear(32, 4))
    with pytest.raises(UserError, match="cannot map QAT ranges"):
        map_to_onnx(other, onnx_model)
