"""Layer sensitivity: which quantized nodes cost the accuracy, measured in ONNX Runtime.

Why: when INT8 loses too much, the fix is almost always a handful of layers (an activation with
outliers, a layer whose weights span orders of magnitude). Finding them by hand means rebuilding
the model once per guess; here every quantizable node group is scored twice against cached FP32
outputs on a held-out slice:

- *only this*: the group quantized, everything else float - how much damage it does alone;
- *all but this*: everything quantized except the group - how much keeping it float recovers.

A variant (targets without their own placement, or explicit `groups`) is the Q/DQ model the
target simulates its int8 with (`Target.qdq_model` with `keep_float`: TensorRT's placement,
asymmetric activation ranges on TFLite targets); this module
never picks a backend itself. One ORT session per variant: 2 x groups + 2 builds in all, and the
FP32 outputs are computed once.

Groups: a quantized node (Conv, ConvTranspose, Gemm, MatMul, pooling, fusable residual Add: the
nodes the target's Q/DQ model actually quantizes) plus the activation it feeds when that activation is
its only consumer (backends fuse the pair, so they go float together).

Ranking: by `recovery_db` = SQNR(all but this) - SQNR(all quantized), ties broken by the lower
SQNR(only this). SQNR is continuous, so it ranks well even on slices too small for top-1 to move.

Whole-model ranking and the mixed-precision planner use the target's own placement: a target that
knows where its int8 grids are (`Target.int8_placement`) is emulated by one switchable session
(edgepipe.accuracy.placement), whose groups are quantized tensors and weights, elementwise ones
included. Argmax agreement is one decision per position of the last axis (per CTC time step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgepipe import graph, quantmath
from edgepipe.calibrate.collector import sample_indices
from edgepipe.calibrate.result import CalibrationResult
from edgepipe.errors import UserError, one_line

FUSED_ACTIVATIONS = ("Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "LeakyRelu", "Elu",
                     "Selu", "Gelu", "Softplus", "Mish", "PRelu")
METRICS = ("auto", "top1", "agreement", "sequence", "sqnr")


@dataclass(frozen=True)
class NodeGroup:
    """What goes float together: a quantized node (the group's name) and the activation fused
    with it, or - with a target placement - every node touching one quantized tensor, so that
    the tensor itself stays float (`switches` are the quantization points the group removes)."""

    name: str
    op_type: str
    nodes: tuple[str, ...]
    activations: tuple[str, ...]  # quantized activation inputs (calibrated tensors)
    switches: tuple[str, ...] = ()  # placement switches scored "alone" (edgepipe.accuracy.placement)


@dataclass
class Metrics:
    """How one variant compares with FP32 on the evaluated samples."""

    sqnr_db: float  # worst output
    cosine: float  # worst output
    argmax_agreement: float  # first output, vs FP32 argmax
    top1: float | None = None  # first output, vs labels
    fp32_top1: float | None = None
    sequence_agreement: float | None = None  # first output [N, T, C]: CTC readings vs FP32's

    def value(self, metric: str) -> float:
        """The metric as 'higher is better' (sqnr in dB, the others as fractions)."""
        return {"top1": self.top1, "agreement": self.argmax_agreement, "sequence": self.sequence_agreement,
                "sqnr": self.sqnr_db}[metric]

    def drop(self, metric: str) -> float:
        """Accuracy lost vs FP32: top-1 points, or the fraction of changed argmax (not for sqnr)."""
        if metric == "top1":
            return float(self.fp32_top1 - self.top1)
        if metric == "agreement":
            return 1.0 - self.argmax_agreement
        if metric == "sequence" and self.sequence_agreement is not None:
            return 1.0 - self.sequence_agreement
        raise ValueError("sqnr has no drop; compare sqnr_db with a minimum")

    def to_dict(self) -> dict:
        """results.json-compatible keys (accuracy section)."""
        return {"sqnr_db": _finite(self.sqnr_db), "cosine": self.cosine, "argmax_agreement": self.argmax_agreement,
                "top1": self.top1, "fp32_top1": self.fp32_top1, "sequence_agreement": self.sequence_agreement}


def resolve_metric(metric: str, has_labels: bool) -> str:
    if metric not in METRICS:
        raise UserError(f"metric '{metric}' is unknown; use one of: {', '.join(METRICS)}")
    if metric == "auto":
        return "top1" if has_labels else "agreement"
    if metric == "top1" and not has_labels:
        raise UserError("metric 'top1' needs labels: pass an eval set with labels (ImageFolder or .npz 'labels')")
    return metric


def _finite(value: float) -> float | None:
    """JSON has no infinity: identical outputs (SQNR = inf) are written as null."""
    return None if value is None or math.isinf(value) or math.isnan(value) else float(value)


class VariantEvaluator:
    """Runs the FP32 model once on a slice, then scores Q/DQ variants (which nodes stay float)."""

    def __init__(self, model: onnx.ModelProto, calibration: CalibrationResult, dataset, *, target,
                 max_samples: int | None = 64, use_placement: bool = False, int16: bool = False,
                 backend: dict | None = None):
        self.target = target  # an edgepipe.targets.Target: its qdq_model() quantizes each variant
        self.model = graph.ensure_node_names(_copy(model))
        self.calibration, self.symmetric = calibration, bool(target.activation_symmetric)
        if len(dataset) == 0:
            raise UserError(f"{getattr(dataset, 'source', 'eval set')}: no samples to measure sensitivity on")
        self.indices = sample_indices(len(dataset), max_samples)
        self.feeds = [dataset.sample(i) for i in self.indices]
        labels = getattr(dataset, "labels", None)
        self.labels = None if labels is None else np.asarray(labels)[self.indices]
        self.output_names = [o.name for o in self.model.graph.output]
        self.reference = self._run(self.model)
        decisions = _argmax(self.reference[0])
        self.fp32_top1 = (float(np.mean(decisions == self.labels))
                          if self.labels is not None and len(decisions) == len(self.labels) else None)
        self.sessions_built = 1
        self.evaluations = 0
        self._cache: dict[tuple, Metrics] = {}
        # a target that says where its int8 grids are (arm-cpu: the .tflite's) is emulated by one
        # switchable session; others build their Q/DQ model per variant (Target.qdq_model)
        placement = None
        if use_placement:  # with int16: the placement that also carries the 16x8 grids (a second level)
            placement = (target.int16_placement if int16 else target.int8_placement)(self.model, calibration, backend)
        self.switchable = None
        if placement is not None:
            from edgepipe.accuracy.placement import SwitchableQdq

            self.switchable = SwitchableQdq(self.model, placement, self.output_names)
            self.sessions_built += 1
            self.qdq_report = {"quantized_nodes": {n: {"op": "", "inputs": []} for n in placement.int8_nodes}}
        else:
            self.qdq_report = target.qdq_model(self.model, calibration)[1]

    @property
    def placement(self):
        return self.switchable.placement if self.switchable is not None else None

    @property
    def placement_description(self) -> str:
        """What the variants are quantized with (reports name it next to the scores)."""
        return self.placement.description if self.placement is not None else QDQ_PER_VARIANT

    def __len__(self) -> int:
        return len(self.feeds)

    def groups(self) -> list[NodeGroup]:
        """Quantized node groups in graph order (what the backend quantizes when nothing is float)."""
        if self.switchable is not None:
            return placement_groups(self.model, self.switchable)
        quantized = self.qdq_report["quantized_nodes"]
        consumers = graph.consumers(self.model)
        result = []
        for node in self.model.graph.node:
            if node.name not in quantized:
                continue
            members = [node.name]
            readers = consumers.get(node.output[0], []) if node.output else []
            if len(readers) == 1 and readers[0].op_type in FUSED_ACTIVATIONS:
                members.append(readers[0].name)
            activations = tuple(t for t in quantized[node.name]["inputs"] if t in self.calibration)
            result.append(NodeGroup(node.name, node.op_type, tuple(members), activations))
        return result

    def reference_metrics(self) -> Metrics:
        return self._score(self.reference)

    def evaluate(self, float_nodes, int16_nodes=()) -> Metrics:
        """Metrics of the variant with `float_nodes` kept float and `int16_nodes` 16x8 (needs a
        placement with int16 grids), cached per variant."""
        key = (frozenset(float_nodes), frozenset(int16_nodes))
        if key not in self._cache:
            self.evaluations += 1
            if self.switchable is not None:
                on = self.switchable.switches_for(*key)
                self._cache[key] = self._score(self.switchable.run(self.feeds, on))
            else:
                qdq, _ = self.target.qdq_model(self.model, self.calibration, keep_float=key[0])
                self.sessions_built += 1
                self._cache[key] = self._score(self._run(qdq))
        return self._cache[key]

    def evaluate_alone(self, group: NodeGroup, samples: int | None = None, int16: bool = False) -> Metrics:
        """Metrics with only `group` quantized (every other node float) on the first `samples`;
        `int16`: the group's points on their int16 grids where they have one."""
        self.evaluations += 1
        if self.switchable is None or not group.switches:
            everything = set(self.qdq_report["quantized_nodes"]) | {n for g in self.groups() for n in g.nodes}
            return self.evaluate(everything - set(group.nodes), set(group.nodes) if int16 else ())
        count = len(self.feeds) if samples is None else min(samples, len(self.feeds))
        switches = set(group.switches)
        if int16:
            switches = self.switchable.placement.as_int16(self.switchable.index, switches)
        outputs = self.switchable.run(self.feeds[:count], switches)
        return self._score(outputs, count)

    def _run(self, model: onnx.ModelProto) -> list[np.ndarray]:
        session = graph.make_session(model)
        per_output: list[list[np.ndarray]] = [[] for _ in self.output_names]
        for feed in self.feeds:
            for store, value in zip(per_output, session.run(self.output_names, feed)):
                store.append(np.asarray(value, np.float32))
        return [np.concatenate(values, axis=0) for values in per_output]

    def _score(self, outputs: list[np.ndarray], count: int | None = None) -> Metrics:
        """Compare with FP32 (on the first `count` samples when the variant ran on fewer)."""
        reference = self.reference if count is None else [r[:count] for r in self.reference]
        sqnr = min(quantmath.sqnr_db(ref, out) for ref, out in zip(reference, outputs))
        cos = min(quantmath.cosine(ref, out) for ref, out in zip(reference, outputs))
        predicted = _argmax(outputs[0])
        agreement = float(np.mean(predicted == _argmax(reference[0])))
        top1 = None
        if self.labels is not None and count is None and len(predicted) == len(self.labels):
            top1 = float(np.mean(predicted == self.labels))
        sequence = quantmath.ctc_sequence_agreement(reference[0], outputs[0])
        return Metrics(sqnr, cos, agreement, top1, self.fp32_top1, sequence)


def placement_groups(model: onnx.ModelProto, switchable) -> list[NodeGroup]:
    """One group per quantization point of a target placement, in graph order: a tensor (its
    producer and int8 readers go float, so the tensor is never on its grid) or a weight (the
    weighted node goes float); fused activations join their producer."""
    from edgepipe.accuracy.placement import tensor_switch, weight_switch

    placement, index = switchable.placement, switchable.index
    ops = {n.name: n.op_type for n in model.graph.node}
    order = [i.name for i in model.graph.input] + [out for n in model.graph.node for out in n.output]
    first_input = {n.name: n.input[0] for n in model.graph.node if n.input}
    groups, seen = [], set()
    for tensor in (t for t in order if t in placement.grids):
        source = first_input.get(index.producer.get(tensor, ""), "")
        if placement.grids.get(source) == placement.grids[tensor]:
            continue  # a pass-through (Reshape, Transpose, Slice...) on its input's grid adds no error
        touching = {index.producer.get(tensor)} | set(index.readers.get(tensor, ()))
        nodes = placement.partners(touching & placement.int8_nodes)
        producer = index.producer.get(tensor)
        key = frozenset(nodes)
        if nodes and key not in seen:
            seen.add(key)
            groups.append(NodeGroup(tensor, ops.get(producer, "input"), tuple(sorted(nodes)), (tensor,),
                                    (tensor_switch(tensor),)))
    for node in (n.name for n in model.graph.node if n.name in placement.weights):
        groups.append(NodeGroup(f"{node}/weights", ops[node], tuple(sorted(placement.partners({node}))), (),
                                (weight_switch(node),)))
    return groups


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _argmax(output: np.ndarray) -> np.ndarray:
    """One decision per position along the class axis (`quantmath.class_decisions`): one per
    sample of a [N, C] classifier, per time step of a [N, T, C] sequence head (CTC), per pixel of a
    [N, C, H, W] map."""
    return quantmath.class_decisions(output)


@dataclass
class NodeSensitivity:
    group: NodeGroup
    only: Metrics  # only this group quantized
    all_but: Metrics | None  # every group quantized except this one (None: ranked by `only` alone)
    recovery_db: float | None  # SQNR(all but this) - SQNR(all quantized)
    activation: dict = field(default_factory=dict)  # calibration of its first quantized activation


QDQ_PER_VARIANT = "Q/DQ model per variant (Target.qdq_model)"


@dataclass
class SensitivityReport:
    """Ranked per-group sensitivity; `to_json()` is the bundle's sensitivity.json."""

    metric: str
    samples: int
    fp32: Metrics
    int8: Metrics  # everything quantized
    nodes: list[NodeSensitivity]  # most sensitive first
    symmetric: bool = True
    placement: str = QDQ_PER_VARIANT

    def ranked_groups(self) -> list[NodeGroup]:
        return [n.group for n in self.nodes]

    def _drop(self, metrics: Metrics) -> float | None:
        if (self.metric == "sqnr" or (self.metric == "top1" and metrics.top1 is None)
                or (self.metric == "sequence" and metrics.sequence_agreement is None)):
            return None  # scored on a few samples (the planner's ranking pass): no top-1 there
        return metrics.drop(self.metric)

    def to_json(self) -> dict:
        nodes = []
        for rank, n in enumerate(self.nodes, 1):
            all_but = n.all_but or Metrics(float("nan"), float("nan"), None)
            nodes.append({
                "rank": rank, "name": n.group.name, "op_type": n.group.op_type, "nodes": list(n.group.nodes),
                "sqnr_only_db": _finite(n.only.sqnr_db), "sqnr_all_but_db": _finite(all_but.sqnr_db),
                "recovery_db": _finite(n.recovery_db),
                "metric_drop": self._drop(n.only), "metric_drop_all_but": self._drop(n.all_but) if n.all_but else None,
                "agreement_only": n.only.argmax_agreement, "agreement_all_but": all_but.argmax_agreement,
                "activation": n.activation,
            })
        return {"schema": 1, "metric": self.metric, "samples": self.samples,
                "scheme": "symmetric" if self.symmetric else "asymmetric", "placement": self.placement,
                "fp32": self.fp32.to_dict(), "int8": {**self.int8.to_dict(), "metric_drop": self._drop(self.int8)},
                "nodes": nodes,
                "notes": "sqnr_*_db null = identical to FP32; metric_drop = FP32 metric - metric with only "
                         "this node quantized; metric_drop_all_but = with everything but this node quantized"}

    def text_table(self, top: int | None = 20) -> str:
        drop_label = {"top1": "top1 drop", "agreement": "argmax chg", "sequence": "reading chg", "sqnr": "-"}[self.metric]
        header = ("#", "node", "op", "SQNR only", "SQNR all-but", "gain dB", drop_label, "act range", "method")
        rows = [header]
        for rank, n in enumerate(self.nodes[:top] if top else self.nodes, 1):
            act = n.activation
            act_range = f"[{act['min']:.3g}, {act['max']:.3g}]" if act else "-"
            drop = self._drop(n.only)
            rows.append((str(rank), n.group.name, n.group.op_type, _db(n.only.sqnr_db),
                         _db(n.all_but.sqnr_db if n.all_but else None), _db(n.recovery_db), "-" if drop is None else f"{drop:+.4f}", act_range,
                         act.get("method", "-") if act else "-"))
        rows = [tuple(one_line(c) for c in row) for row in rows]  # node names: one line, inert
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        summary = f"all quantized: SQNR {_db(self.int8.sqnr_db)} dB, argmax agreement {self.int8.argmax_agreement:.4f}"
        if self.int8.top1 is not None:
            summary += f", top1 {self.int8.top1:.4f} (FP32 {self.fp32_top1_text()})"
        return "\n".join(lines + [f"{summary}; {self.samples} samples"])

    def fp32_top1_text(self) -> str:
        return f"{self.int8.fp32_top1:.4f}" if self.int8.fp32_top1 is not None else "-"


def _db(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "inf" if math.isinf(value) else f"{value:.1f}"


def analyze_sensitivity(model: onnx.ModelProto, calibration: CalibrationResult, dataset, *, target=None,
                        groups: list[list[str]] | None = None, max_samples: int | None = 64,
                        metric: str = "auto", evaluator: VariantEvaluator | None = None,
                        backend: dict | None = None) -> SensitivityReport:
    """Score every quantized node group (or the given `groups` of node names) and rank them.

    `target` quantizes the variants (see VariantEvaluator); `evaluator` lets a caller (the
    mixed-precision planner) share cached FP32 outputs and variants instead.
    """
    if evaluator is None and target is None:
        raise TypeError("analyze_sensitivity needs the target whose int8 it simulates (target=) or an evaluator")
    # whole-model ranking on the target's own placement where it has one (arm-cpu: the .tflite's
    # grids, elementwise tensors included); explicit groups name nodes of the Q/DQ simulation
    evaluator = evaluator or VariantEvaluator(model, calibration, dataset, target=target, max_samples=max_samples,
                                              use_placement=groups is None, backend=backend)
    metric = resolve_metric(metric, evaluator.labels is not None)
    node_groups = _explicit_groups(evaluator, groups) if groups is not None else evaluator.groups()
    if not node_groups:
        raise UserError("no quantizable nodes (Conv, Gemm, MatMul, pooling, residual Add) with calibration "
                        "ranges in the model; nothing to analyze")
    all_names = {name for g in node_groups for name in g.nodes}
    fp32 = evaluator.reference_metrics()
    int8 = evaluator.evaluate(set())
    results = []
    for group in node_groups:
        if evaluator.switchable is not None and group.switches:  # only this group's points on their grid
            only = evaluator.evaluate_alone(group)
        else:
            only = evaluator.evaluate((all_names - set(group.nodes)) | _ungrouped_quantized(evaluator, all_names))
        all_but = evaluator.evaluate(set(group.nodes))
        activation = {}
        if group.activations and group.activations[0] in calibration.tensors:
            t = calibration.tensors[group.activations[0]]
            activation = {"tensor": t.name, "min": t.min, "max": t.max, "amax": t.amax, "lo": t.lo, "hi": t.hi,
                          "method": t.method}
        results.append(NodeSensitivity(group, only, all_but, all_but.sqnr_db - int8.sqnr_db, activation))
    results.sort(key=lambda n: (-n.recovery_db, n.only.sqnr_db))
    return SensitivityReport(metric, len(evaluator), fp32, int8, results, evaluator.symmetric,
                             evaluator.placement_description)


def _ungrouped_quantized(evaluator: VariantEvaluator, grouped: set[str]) -> set[str]:
    """Quantized nodes outside explicit groups stay float in 'only this' runs."""
    return set(evaluator.qdq_report["quantized_nodes"]) - grouped


def _explicit_groups(evaluator: VariantEvaluator, groups: list[list[str]]) -> list[NodeGroup]:
    nodes = {n.name: n for n in evaluator.model.graph.node}
    quantized = evaluator.qdq_report["quantized_nodes"]
    result = []
    for members in groups:
        unknown = [m for m in members if m not in nodes]
        if unknown or not members:
            raise UserError(f"sensitivity group {list(members)}: node '{(unknown or ['(empty)'])[0]}' is not in "
                            "the model; use ONNX node names (see `edgepipe inspect`)")
        inputs = [t for m in members if m in quantized for t in quantized[m]["inputs"] if t in evaluator.calibration]
        result.append(NodeGroup(members[0], nodes[members[0]].op_type, tuple(members), tuple(inputs)))
    return result


__all__ = ["analyze_sensitivity", "SensitivityReport", "NodeSensitivity", "NodeGroup", "Metrics",
           "VariantEvaluator", "resolve_metric"]
