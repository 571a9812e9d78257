"""Quantization-aware fine-tuning with knowledge distillation, for PyTorch source models.

Why: when mixed precision would keep too many layers float, the weights can instead learn to
live on the INT8 grid. The student sees the deployed arithmetic (fake quantization) in its
forward pass; the FP32 model is its teacher, so few labels (or none) are needed.

What is simulated - the same places the Q/DQ model (edgepipe/backends/qdq.py) quantizes weighted ops:
- weights of Conv2d/Linear: per-output-channel symmetric int8 in [-127, 127], scale recomputed
  from the current weights each step (exactly `quantmath.per_channel_symmetric`); rounding uses
  the straight-through estimator (STE). Per-channel scales commute with a later BatchNorm fold
  (BN multiplies each output channel by a constant), so the grid survives the fold stage;
- the activation input of each Conv2d/Linear: per-tensor symmetric int8 (scale = amax / 127,
  [-128, 127]) with a *learned* scale, LSQ style (Esser et al. 2020: STE for rounding, gradient
  of the scale scaled by 1/sqrt(numel * 127)), initialized from calibration (or the first batch).
Pooling inputs and residual skips are not simulated; they keep their calibrated ranges.
BatchNorm statistics are frozen during fine-tuning (standard for QAT: batch statistics of the
fake-quantized net are noisy and would no longer match the folded deployment).

Back into the pipeline: `strip_qat` removes the fake-quant (plain module, original state_dict
keys, fine-tuned float weights) and `learned_calibration` writes the learned ranges as a
CalibrationResult over the exported ONNX tensor names. Mapping method: Conv2d/Linear modules in
forward-execution order (recorded with hooks) are matched one to one with the ONNX Conv/Gemm/
MatMul nodes that have a constant weight, in graph order (the exporter emits them in execution
order and the fold stages keep it); every pair must agree on the weight shape, else UserError.
Graph inputs keep their calibrated range: after an input-normalization fold the ONNX input is in
another domain than the torch module's input.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from edgepipe import graph
from edgepipe.calibrate.result import CalibrationResult, TensorCalibration
from edgepipe.errors import UserError

QUANTIZED_MODULES = (nn.Conv2d, nn.Linear)
ONNX_WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
QUANTIZER_ATTR = "input_quantizer"


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return (torch.round(x) - x).detach() + x


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize-dequantize with STE; gradient 0 outside [qmin, qmax] * scale (clipped values)."""
    return torch.clamp(round_ste(x / scale), qmin, qmax) * scale


class PerChannelWeightQuant(nn.Module):
    """Parametrization: weight -> per-output-channel symmetric int8 grid (narrow [-127, 127])."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        amax = weight.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12)
        scale = (amax / 127.0).view(-1, *([1] * (weight.dim() - 1)))
        return fake_quantize(weight, scale, -127, 127)


class LearnedActivationQuant(nn.Module):
    """Per-tensor symmetric int8 activation quantizer with an LSQ-learned scale."""

    def __init__(self, amax: float | None = None):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        if amax is not None:
            self.set_amax(amax)

    def set_amax(self, amax: float) -> None:
        with torch.no_grad():
            self.scale.fill_(max(float(amax), 1e-8) / 127.0)
            self.initialized.fill_(True)

    @property
    def amax(self) -> float:
        return float(self.scale.detach().abs()) * 127.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.set_amax(float(x.detach().abs().max()))
        grad_scale = 1.0 / math.sqrt(x.numel() / x.shape[0] * 127.0)
        scale = self.scale.abs().clamp_min(1e-8)
        scale = (scale - scale * grad_scale).detach() + scale * grad_scale
        return fake_quantize(x, scale, -128, 127)


def _quantize_input_hook(module: nn.Module, args: tuple):
    return (getattr(module, QUANTIZER_ATTR)(args[0]), *args[1:])


def quantized_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, QUANTIZED_MODULES)]


def prepare_qat(module: nn.Module, calibration: CalibrationResult | None = None, *,
                onnx_model: onnx.ModelProto | None = None) -> nn.Module:
    """Insert fake quantization into `module` in place (and return it).

    With `calibration` and the `onnx_model` it was computed on, activation scales start from the
    calibrated amax of the matching ONNX tensors; otherwise from the first batch's max |x|.
    """
    mapping = {}
    if calibration is not None:
        if onnx_model is None:
            raise ValueError("prepare_qat: calibration ranges need the onnx_model they belong to")
        mapping = {name: tensor for name, _, tensor in map_to_onnx(module, onnx_model)}
    inputs = {i.name for i in graph.graph_inputs(onnx_model)} if onnx_model is not None else set()
    for name, child in quantized_modules(module):
        if parametrize.is_parametrized(child, "weight"):
            raise ValueError(f"module '{name}' is already prepared for QAT")
        tensor = mapping.get(name)
        amax = calibration.tensors[tensor].amax if tensor in (calibration or {}) and tensor not in inputs else None
        _attach(child, LearnedActivationQuant(amax))
    return module


def _attach(child: nn.Module, quantizer: LearnedActivationQuant) -> None:
    parametrize.register_parametrization(child, "weight", PerChannelWeightQuant())
    child.add_module(QUANTIZER_ATTR, quantizer)
    child._qat_hook = child.register_forward_pre_hook(_quantize_input_hook)


def float_copy(module: nn.Module) -> nn.Module:
    """A plain float deep copy of a (possibly prepared) module; `module` keeps its quantizers.

    Parametrized modules do not survive copy.deepcopy, so strip, copy, and re-attach."""
    quantizers = {name: getattr(m, QUANTIZER_ATTR) for name, m in quantized_modules(module)
                  if hasattr(m, QUANTIZER_ATTR)}
    strip_qat(module)
    clone = copy.deepcopy(module)
    children = dict(quantized_modules(module))
    for name, quantizer in quantizers.items():
        _attach(children[name], quantizer)
    return clone


def strip_qat(module: nn.Module) -> nn.Module:
    """Remove fake quantization in place: plain float module with its original state_dict keys."""
    for _, child in quantized_modules(module):
        if parametrize.is_parametrized(child, "weight"):
            parametrize.remove_parametrizations(child, "weight", leave_parametrized=False)
        if hasattr(child, "_qat_hook"):
            child._qat_hook.remove()
            del child._qat_hook
        if hasattr(child, QUANTIZER_ATTR):
            delattr(child, QUANTIZER_ATTR)
    return module


def learned_ranges(module: nn.Module) -> dict[str, float]:
    """{module name: learned activation amax} of a prepared module."""
    return {name: getattr(m, QUANTIZER_ATTR).amax for name, m in quantized_modules(module)
            if hasattr(m, QUANTIZER_ATTR) and bool(getattr(m, QUANTIZER_ATTR).initialized)}


# -- distillation ---------------------------------------------------------------------------
def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                      alpha: float, T: float) -> torch.Tensor:
    """alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T)).

    KL is averaged per sample (batchmean); T^2 keeps the soft-target gradients on the scale of
    the hard-label ones (Hinton et al. 2015). Without labels the CE term is dropped (alpha = 0).
    """
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.log_softmax(teacher_logits.detach() / T, dim=-1),
                    reduction="batchmean", log_target=True) * (T * T)
    if labels is None:
        return soft
    return alpha * F.cross_entropy(student_logits, labels) + (1.0 - alpha) * soft


class FeatureCapture:
    """Forward hooks that keep the outputs of named submodules (for feature distillation)."""

    def __init__(self, module: nn.Module, layers: list[str]):
        named = dict(module.named_modules())
        missing = [layer for layer in layers if layer not in named]
        if missing:
            raise UserError(f"feature layer '{missing[0]}' is not a submodule; choose from: "
                            f"{', '.join(n for n in list(named)[1:20] if n)}")
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [named[layer].register_forward_hook(self._keep(layer)) for layer in layers]

    def _keep(self, layer: str):
        def hook(_module, _inputs, output):
            self.outputs[layer] = output
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def finetune(module: nn.Module, train_dataset, *, epochs: int, lr: float = 1e-4, alpha: float = 0.5,
             T: float = 4.0, teacher: nn.Module | None = None, batch_size: int = 32,
             feature_layers: tuple[str, ...] = (), feature_weight: float = 1.0, seed: int = 0,
             log=None) -> tuple[nn.Module, list[dict]]:
    """Fine-tune a prepared (fake-quantized) `module` with distillation from `teacher`.

    `train_dataset`: an edgepipe Dataset in the *torch module's* input domain; labels optional.
    Teacher default: a float copy of `module` as it is now. Returns (module, per-epoch history).
    """
    if teacher is None:
        teacher = float_copy(module)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    inputs = [torch.from_numpy(np.ascontiguousarray(train_dataset.stack(n))) for n in train_dataset.names]
    labels = None if train_dataset.labels is None else torch.from_numpy(np.asarray(train_dataset.labels))
    student_features = FeatureCapture(module, list(feature_layers))
    teacher_features = FeatureCapture(teacher, list(feature_layers))
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    try:
        for epoch in range(epochs):
            _train_mode_frozen_bn(module)
            order = torch.randperm(len(inputs[0]), generator=generator)
            total, correct, seen = 0.0, 0, 0
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                batch = [x[index] for x in inputs]
                with torch.no_grad():
                    teacher_logits = teacher(*batch)
                logits = module(*batch)
                batch_labels = None if labels is None else labels[index]
                loss = distillation_loss(logits, teacher_logits, batch_labels, alpha, T)
                for layer in feature_layers:
                    loss = loss + feature_weight * F.mse_loss(student_features.outputs[layer],
                                                              teacher_features.outputs[layer])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
                seen += len(index)
                if batch_labels is not None:
                    correct += int((logits.argmax(-1) == batch_labels).sum())
            entry = {"epoch": epoch + 1, "loss": total / seen,
                     "train_top1": correct / seen if labels is not None else None}
            history.append(entry)
            if log:
                log(f"epoch {entry['epoch']}: loss {entry['loss']:.4f}")
    finally:
        student_features.close()
        teacher_features.close()
    return module.eval(), history


def _train_mode_frozen_bn(module: nn.Module) -> None:
    module.train()
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()


# -- back into the pipeline -------------------------------------------------------------------
def map_to_onnx(module: nn.Module, onnx_model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """[(module name, ONNX node name, ONNX activation input tensor)] matched by execution order."""
    order: list[str] = []
    names = {id(m): name for name, m in quantized_modules(module)}
    handles = [m.register_forward_pre_hook(lambda m, _a: order.append(names[id(m)])) for _, m in
               quantized_modules(module)]
    example = [torch.zeros([int(d) for d in graph.tensor_shape(i)]) for i in graph.graph_inputs(onnx_model)]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(*example)
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    modules = dict(quantized_modules(module))
    nodes = [n for n in onnx_model.graph.node if n.op_type in ONNX_WEIGHTED_OPS and len(n.input) > 1
             and graph.constant_value(onnx_model, n.input[1]) is not None]
    if len(order) != len(nodes):
        raise UserError(f"cannot map QAT ranges: the module runs {len(order)} Conv2d/Linear layers but the ONNX "
                        f"model has {len(nodes)} Conv/Gemm/MatMul nodes; export the same architecture")
    pairs = []
    for name, node in zip(order, nodes):
        weight = graph.constant_value(onnx_model, node.input[1])
        expected = tuple(_original_weight(modules[name]).shape)
        transposed = expected[::-1] if len(expected) == 2 else expected
        if tuple(weight.shape) not in (expected, transposed):
            raise UserError(f"cannot map QAT ranges: module '{name}' (weight {list(expected)}) meets ONNX node "
                            f"'{node.name}' (weight {list(weight.shape)}) in execution order; the graphs differ")
        pairs.append((name, node.name, node.input[0]))
    return pairs


def _original_weight(child: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(child, "weight"):
        return child.parametrizations.weight.original
    return child.weight


def learned_calibration(module: nn.Module, onnx_model: onnx.ModelProto,
                        base: CalibrationResult | None = None) -> CalibrationResult:
    """Calibration whose weighted-op input ranges are the learned QAT ranges (others from `base`)."""
    ranges = learned_ranges(module)
    result = CalibrationResult(method="qat", num_samples=base.num_samples if base else 0)
    if base is not None:
        result.tensors = {k: replace(v) for k, v in base.tensors.items()}
        result.histograms = dict(base.histograms)
    inputs = {i.name for i in graph.graph_inputs(onnx_model)}
    learned: dict[str, float] = {}
    for name, _node, tensor in map_to_onnx(module, onnx_model):
        if name in ranges and tensor not in inputs:
            learned[tensor] = max(learned.get(tensor, 0.0), ranges[name])
    for tensor, amax in learned.items():
        old = result.tensors.get(tensor)
        lo = 0.0 if old is not None and old.min >= 0.0 else -amax
        result.tensors[tensor] = TensorCalibration(
            name=tensor, min=old.min if old else lo, max=old.max if old else amax, amax=amax, lo=lo, hi=amax,
            method="qat-lsq", reason="activation scale learned by quantization-aware fine-tuning",
            stability=old.stability if old else {})
    return result


__all__ = ["prepare_qat", "strip_qat", "finetune", "distillation_loss", "learned_calibration", "learned_ranges",
           "map_to_onnx", "float_copy", "fake_quantize", "round_ste", "PerChannelWeightQuant", "LearnedActivationQuant",
           "FeatureCapture"]
