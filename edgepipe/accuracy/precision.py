"""Automatic mixed precision: the fewest float nodes that bring INT8 within an accuracy budget.

Why: keeping everything float throws away the speed of INT8, keeping everything INT8 sometimes
loses too much; a few sensitive layers are usually the whole difference. The planner:

1. scores every quantized node group (edgepipe.accuracy.sensitivity) on a held-out slice;
2. greedy: moves the most sensitive group (largest SQNR recovery) to float, re-evaluates, and
   stops as soon as the budget holds;
3. prunes: tries to return each float group to INT8 again (least sensitive first) and keeps the
   removal when the budget still holds - greedy order alone can leave a redundant early pick;
4. confirms on the full evaluation set, or with `evaluate(float_nodes)` (the real backend, e.g.
   the .tflite in LiteRT); if confirmation fails, keeps adding groups with the confirming
   evaluator until it passes.

Budget: a number = the largest accepted drop vs FP32 (top-1 points with labels, else the
fraction of changed argmax); `{"max_drop": 0.01}` is the same; `{"min_sqnr_db": 30}` asks for a
minimum output SQNR instead. A budget that cannot be met (max_float reached, or still broken
with every group float - e.g. the backend itself differs from FP32) does not raise: the plan
comes back with `met=False` and a one-line `reason`; `plan.require()` raises `BudgetError`
(exit 1) for callers that must stop. Per-layer int16 activations are not planned (INT8/float only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx

from edgepipe.calibrate.result import CalibrationResult
from edgepipe.errors import BudgetError, UserError
from edgepipe.accuracy.sensitivity import (NodeGroup, SensitivityReport, VariantEvaluator, analyze_sensitivity,
                                  resolve_metric)

Evaluate = Callable[[set], dict]


@dataclass(frozen=True)
class Budget:
    """What 'accurate enough' means: a maximum drop of `metric`, or a minimum output SQNR."""

    metric: str  # "top1" | "agreement" | "sqnr"
    limit: float  # max drop (top1/agreement) or min dB (sqnr)

    @classmethod
    def parse(cls, budget, metric: str, has_labels: bool) -> "Budget":
        if isinstance(budget, dict):
            if set(budget) == {"min_sqnr_db"}:
                return cls("sqnr", float(budget["min_sqnr_db"]))
            if set(budget) == {"max_drop"}:
                budget = budget["max_drop"]
            else:
                raise UserError(f"precision budget {budget!r}: use a number (max accuracy drop), "
                                "{'max_drop': 0.01} or {'min_sqnr_db': 30}")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
            raise UserError(f"precision budget {budget!r}: must be a non-negative accuracy drop such as 0.01")
        chosen = resolve_metric(metric, has_labels)
        if chosen == "sqnr":
            raise UserError("precision budget: metric 'sqnr' needs {'min_sqnr_db': N}, not a drop")
        return cls(chosen, float(budget))

    def measure(self, metrics: dict) -> float:
        """The budgeted quantity from a metrics dict (drop, or SQNR in dB)."""
        if self.metric == "sqnr":
            value = metrics.get("sqnr_db")
            return float("inf") if value is None else float(value)
        if self.metric == "top1":
            return float(metrics["fp32_top1"]) - float(metrics["top1"])
        return 1.0 - float(metrics["argmax_agreement"])

    def holds(self, metrics: dict) -> bool:
        value = self.measure(metrics)
        return value >= self.limit if self.metric == "sqnr" else value <= self.limit + 1e-12

    def describe(self) -> str:
        if self.metric == "sqnr":
            return f"output SQNR >= {self.limit:g} dB"
        return f"{'top-1' if self.metric == 'top1' else 'argmax-agreement'} drop <= {self.limit:g}"


@dataclass
class PlanStep:
    action: str  # "int8" (start) | "add" | "remove" | "keep" (removal rejected) | "confirm"
    group: str | None
    float_groups: list[str]
    metrics: dict
    measured: float  # the budgeted quantity after the step
    holds: bool
    evaluator: str  # "slice" | "full" | "backend"


@dataclass
class PrecisionPlan:
    """Result of the planner; `float_nodes` goes to the backend (`precision.float_nodes`)."""

    float_nodes: set[str]
    float_groups: list[str]
    steps: list[PlanStep]
    final: dict
    met: bool
    reason: str
    budget: Budget
    sensitivity: SensitivityReport | None = None
    quantized_groups: int = 0
    extra: dict = field(default_factory=dict)

    def require(self) -> "PrecisionPlan":
        """Raise BudgetError (exit 1) when the budget was not met."""
        if not self.met:
            raise BudgetError(self.reason)
        return self

    def to_json(self) -> dict:
        return {
            "schema": 1, "budget": {"metric": self.budget.metric, "limit": self.budget.limit,
                                    "text": self.budget.describe()},
            "met": self.met, "reason": self.reason, "float_nodes": sorted(self.float_nodes),
            "float_groups": list(self.float_groups), "quantized_groups": self.quantized_groups,
            "final": self.final,
            "steps": [{"action": s.action, "group": s.group, "float_groups": s.float_groups, "metrics": s.metrics,
                       "measured": s.measured, "holds": s.holds, "evaluator": s.evaluator} for s in self.steps],
        }


class _Planner:
    def __init__(self, groups: list[NodeGroup], budget: Budget, search: Evaluate, confirm: Evaluate,
                 confirm_name: str, max_float: int | None):
        self.by_name = {g.name: g for g in groups}
        self.ranked = [g.name for g in groups]
        self.budget, self.search, self.confirm, self.confirm_name = budget, search, confirm, confirm_name
        self.max_float = len(groups) if max_float is None else max(0, int(max_float))
        self.steps: list[PlanStep] = []

    def nodes(self, chosen: list[str]) -> set[str]:
        return {n for name in chosen for n in self.by_name[name].nodes}

    def check(self, chosen: list[str], action: str, group: str | None, confirming: bool = False) -> bool:
        metrics = (self.confirm if confirming else self.search)(self.nodes(chosen))
        holds = self.budget.holds(metrics)
        self.steps.append(PlanStep(action, group, list(chosen), metrics, self.budget.measure(metrics), holds,
                                   self.confirm_name if confirming else "slice"))
        return holds

    def grow(self, chosen: list[str], confirming: bool) -> tuple[list[str], bool]:
        """Add groups in sensitivity order until the budget holds or no group/allowance is left."""
        for name in self.ranked:
            if name in chosen:
                continue
            if len(chosen) >= self.max_float:
                return chosen, False
            chosen = chosen + [name]
            if self.check(chosen, "add", name, confirming):
                return chosen, True
        return chosen, False

    def prune(self, chosen: list[str], confirming: bool = False) -> list[str]:
        for name in reversed(list(chosen)):
            trial = [g for g in chosen if g != name]
            if self.check(trial, "remove", name, confirming):
                chosen = trial
            else:
                self.steps[-1].action = "keep"
        return chosen


def plan_mixed_precision(model: onnx.ModelProto, calibration: CalibrationResult, dataset, budget, *,
                         target, metric: str = "auto", max_float: int | None = None,
                         evaluate: Evaluate | None = None, max_samples: int | None = 64,
                         sensitivity: SensitivityReport | None = None) -> PrecisionPlan:
    """Fewest float node groups such that the budget holds (see module docstring).

    `evaluate(float_nodes) -> metrics dict` (keys as results.json 'accuracy': top1, fp32_top1,
    argmax_agreement, sqnr_db) confirms with the real backend; default: the target's ORT Q/DQ
    simulation (`target.qdq_model`) on all of `dataset`.
    """
    search_ev = VariantEvaluator(model, calibration, dataset, target=target, max_samples=max_samples)
    spec = Budget.parse(budget, metric, search_ev.labels is not None)
    report = sensitivity or analyze_sensitivity(model, calibration, dataset, evaluator=search_ev,
                                                metric=spec.metric)
    if evaluate is not None:
        confirm, confirm_name = evaluate, "backend"
    elif len(search_ev) == len(dataset):
        confirm, confirm_name = (lambda nodes: search_ev.evaluate(nodes).to_dict()), "full"
    else:
        full_ev = VariantEvaluator(model, calibration, dataset, target=target, max_samples=None)
        confirm, confirm_name = (lambda nodes: full_ev.evaluate(nodes).to_dict()), "full"
    groups = report.ranked_groups()
    planner = _Planner(groups, spec, lambda nodes: search_ev.evaluate(nodes).to_dict(), confirm, confirm_name,
                       max_float)

    chosen: list[str] = []
    if not planner.check(chosen, "int8", None):
        chosen, _ = planner.grow(chosen, confirming=False)
        chosen = planner.prune(chosen)
    met = planner.check(chosen, "confirm", None, confirming=True)
    if not met:
        # the confirming evaluator (the real backend) disagrees with the slice: grow on it, then
        # prune on it again so the float set stays the smallest that holds there
        chosen, met = planner.grow(chosen, confirming=True)
        if met:
            chosen = planner.prune(chosen, confirming=True)
            met = planner.check(chosen, "confirm", None, confirming=True)
    final = planner.steps[-1].metrics
    reason = _reason(spec, met, chosen, planner, final)
    return PrecisionPlan(planner.nodes(chosen), chosen, planner.steps, final, met, reason, spec, report,
                         len(groups), {"sessions_built": search_ev.sessions_built})


def plan_on_target(model: onnx.ModelProto, calibration: CalibrationResult, dataset, budget, target,
                   backend_settings: dict | None, **options) -> PrecisionPlan:
    """`plan_mixed_precision` confirmed by the target's own evaluator (its real kernels where they
    run on this host, e.g. LiteRT for arm-cpu), as `build` and `sensitivity --budget` both plan."""
    backend = {k: v for k, v in (backend_settings or {}).items() if v is not None}
    return plan_mixed_precision(model, calibration, dataset, budget, target=target,
                                evaluate=target.evaluator(model, calibration, dataset, backend), **options)


def _reason(budget: Budget, met: bool, chosen: list[str], planner: _Planner, final: dict) -> str:
    measured = budget.measure(final)
    unit = " dB" if budget.metric == "sqnr" else ""
    if met:
        if not chosen:
            return f"all-INT8 meets the budget ({budget.describe()}: {measured:.4g}{unit})"
        return (f"{len(chosen)} of {len(planner.ranked)} quantized node groups kept float to meet "
                f"{budget.describe()} ({measured:.4g}{unit})")
    if len(chosen) >= planner.max_float and len(chosen) < len(planner.ranked):
        return (f"budget {budget.describe()} not met with max_float={planner.max_float} float groups "
                f"({measured:.4g}{unit}); raise max_float or relax the budget")
    return (f"budget {budget.describe()} not met even with all {len(planner.ranked)} quantized node groups "
            f"float ({measured:.4g}{unit}): the loss is not from INT8 layers; relax the budget or check the "
            f"backend/eval data")


__all__ = ["plan_mixed_precision", "plan_on_target", "PrecisionPlan", "PlanStep", "Budget"]
