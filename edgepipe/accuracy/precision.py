"""Automatic mixed precision: the fewest float nodes that bring INT8 within an accuracy budget.

Why: keeping everything float throws away the speed of INT8, keeping everything INT8 sometimes
loses too much; a few sensitive tensors are usually the whole difference. The planner:

1. emulates the target's int8 in ONNX Runtime: with a target placement
   (`Target.int8_placement`, arm-cpu: the .tflite's own grid on every tensor, elementwise and
   activation outputs included) as one switchable session (edgepipe.accuracy.placement), else
   one `Target.qdq_model` per variant;
2. ranks in one pass: each group quantized alone (everything else float) on a few samples, most
   damaging first (output SQNR; a CTC-reading budget puts groups that alone change a reading first). A group is a weighted node's weights, or one quantized tensor with every node
   that touches it (so the tensor is never int8: keeping only its producer float would not help,
   its int8 readers still quantize it);
3. bisects the ranked list: the shortest prefix that holds on the held-out slice
   (ceil(log2 N) + 1 evaluations), then prunes it: a small float set (at most PRUNE_LIMIT
   groups) one group at a time, a larger one by group testing (batches returned to int8, least
   damaging first, a failing batch split in two; at most PRUNE_EVALUATIONS evaluations), since
   a loss spread thinly over many groups leaves harmless groups inside the ranked prefix;
4. confirms on the full evaluation set, or with `evaluate(float_nodes)` (the real backend, e.g.
   the .tflite in LiteRT); if confirmation fails, doubles the float set (next ranked groups)
   until it passes: at most log2(N) more backend runs.
   A backend evaluator that takes `stop` (arm-cpu's LiteRT one) ends a search run early once even
   a perfect rest of the eval set could not meet the budget (`Budget.cannot_hold`: the same
   answer as the full run, at a fraction of the cost); confirmations always run in full.

Budget: a number = the largest accepted drop vs FP32 (top-1 points with labels, else the
fraction of changed argmax decisions, one per position along the class axis,
quantmath.class_decisions: per time step for a [1, T, C] sequence head, per pixel of a
[1, C, H, W] map); `{"max_drop": 0.01}` is the same; `{"max_sequence_drop": 0.01}` budgets
a CTC head by its readings instead (greedy decode, blank = class 0: 1 - edit distance / length vs
FP32's reading, quantmath.ctc_sequence_agreement), so time steps that change no reading cost
nothing; `{"min_sqnr_db": 30}` asks for a minimum output SQNR instead. A budget that cannot be met (max_float reached, or still broken
with every group float - e.g. the backend itself differs from FP32) does not raise: the plan
comes back with `met=False` and a one-line `reason`; `plan.require()` raises `BudgetError`
(exit 1) for callers that must stop.

Levels (`precision.levels`): int8 -> float (default), or on targets with 16x8 (arm-cpu)
int8 -> int16 -> float, so a group the search moves goes to int16 first (still fully integer)
and only to float where int16 is not enough. Not the default: XNNPACK delegates no 16x8 op, so
an int16-heavy plan runs on LiteRT's builtin kernels, far slower than int8 or float, and its
LiteRT confirmation is slow too (benchmarks/precision_search.py measures both):

5. all int8 fails: the whole model at int16 is checked; if it fails too, the groups are ranked a
   second time by their int16-alone damage (`Target.int16_placement`: the 16x8 file's grids,
   int8 where a node has no int16 kernel) and the shortest prefix of that ranking goes float
   (bisection, everything else int16);
6. with that float set fixed, the shortest prefix of the int8 ranking goes int16 (bisection),
   the rest back to int8. Both run on the emulation (the session carries an int16 point next
   to each int8 one; LiteRT's 16x8 kernels are far slower than its XNNPACK int8), about
   2 log2(N) + 3 runs; the backend confirms once, and where it disagrees every non-float group
   goes int16, then the float set doubles along the int16 ranking.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Callable

import onnx

from edgepipe.calibrate.result import CalibrationResult
from edgepipe.errors import BudgetError, UserError
from edgepipe.settings import PrecisionSettings
from edgepipe.accuracy.budget import Budget
from edgepipe.accuracy.plan_report import int8_ops, plan_summary, summary_line
from edgepipe.accuracy.sensitivity import NodeGroup, NodeSensitivity, SensitivityReport, VariantEvaluator

Evaluate = Callable[[set], dict]


@dataclass
class PlanStep:
    action: str  # "int8" (start) | "add" | "remove" | "keep" (removal rejected) | "confirm"
    group: str | None
    float_groups: list[str]
    metrics: dict
    measured: float  # the budgeted quantity after the step
    holds: bool
    evaluator: str  # "slice" | "full" | "backend"
    int16_groups: list[str] = field(default_factory=list)


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
    int16_nodes: set[str] = field(default_factory=set)  # go to the backend as `int16_nodes` (16x8)
    int16_groups: list[str] = field(default_factory=list)
    levels: tuple[str, ...] = ("int8", "float")

    def require(self) -> "PrecisionPlan":
        """Raise BudgetError (exit 1) when the budget was not met."""
        if not self.met:
            raise BudgetError(self.reason)
        return self

    def summary(self) -> dict:
        return plan_summary(self.to_json())

    def to_json(self) -> dict:
        return {
            "schema": 1, "budget": {"metric": self.budget.metric, "limit": self.budget.limit,
                                    "text": self.budget.describe()},
            "met": self.met, "reason": self.reason, "float_nodes": sorted(self.float_nodes),
            "float_groups": list(self.float_groups), "quantized_groups": self.quantized_groups,
            "levels": list(self.levels), "int16_nodes": sorted(self.int16_nodes),
            "int16_groups": list(self.int16_groups),
            "final": self.final, "search": self.extra,
            "steps": [{"action": s.action, "group": s.group, "float_groups": s.float_groups,
                       "int16_groups": s.int16_groups, "metrics": s.metrics,
                       "measured": s.measured, "holds": s.holds, "evaluator": s.evaluator} for s in self.steps],
        }


DEFAULT_LEVELS = ("int8", "float")  # int16 is opt-in: LiteRT runs 16x8 on its builtin kernels, not XNNPACK
PRUNE_LIMIT = 8  # prune a float set of at most this many groups one by one (one evaluation each)
PRUNE_EVALUATIONS = 64  # larger float sets: at most this many batch evaluations (group testing)
PRUNE_SECONDS = 180.0  # ... and at most this long, so that the whole search stays within minutes
RANK_SAMPLES = 2  # samples each group is scored on alone (output SQNR ranks well on few)


class _Planner:
    def __init__(self, groups: list[NodeGroup], budget: Budget, search: Evaluate, confirm: Evaluate,
                 confirm_name: str, max_float: int | None, search_name: str = "slice"):
        self.by_name = {g.name: g for g in groups}
        self.ranked = [g.name for g in groups]
        self.budget, self.search, self.confirm, self.confirm_name = budget, search, confirm, confirm_name
        self.search_name = search_name
        self.max_float = len(groups) if max_float is None else max(0, int(max_float))
        self.steps: list[PlanStep] = []
        self.pruned_from: list[str] = []  # the float set before the prune (precision.json reports both)
        self.prune_seconds = 0.0
        self.stop: Callable[[dict], bool] | None = None  # early reject of search runs (Budget.cannot_hold)

    def nodes(self, chosen: list[str]) -> set[str]:
        return {n for name in chosen for n in self.by_name[name].nodes}

    def check(self, chosen: list[str], action: str, group: str | None, confirming: bool = False,
              int16: list[str] | None = None) -> bool:
        """Does the budget hold with `chosen` float (and, on the int16 level, `int16` 16x8)?"""
        evaluate = self.confirm if confirming else self.search
        float_nodes = self.nodes(chosen)
        early = {} if confirming or self.stop is None else {"stop": self.stop}
        metrics = evaluate(float_nodes, **early) if int16 is None else evaluate(
            float_nodes, self.nodes(int16) - float_nodes, **early)
        holds = self.budget.holds(metrics)
        self.steps.append(PlanStep(action, group, list(chosen), metrics, self.budget.measure(metrics), holds,
                                   self.confirm_name if confirming else self.search_name, list(int16 or [])))
        return holds

    def shortest_prefix(self, ranked: list[str], holds) -> list[str]:
        """Bisection for the shortest prefix of `ranked` with `holds(prefix)`, given that the empty
        prefix fails and the whole list holds: ceil(log2(len)) evaluations."""
        low, high = 0, len(ranked)
        while high - low > 1:
            middle = (low + high) // 2
            if holds(ranked[:middle]):
                high = middle
            else:
                low = middle
        return ranked[:high]

    def levels(self, int16_ranking) -> tuple[list[str], list[str], bool]:
        """(float groups, int16 groups, met) on the int8 -> int16 -> float ladder (module docstring,
        steps 5-6). `int16_ranking()` ranks the groups by int16-alone damage (only when needed)."""
        everything, chosen = list(self.ranked), []
        if self.check([], "int8", None, int16=[]):
            return [], [], True
        if not self.check([], "int16", None, int16=everything):
            order = [g for g in int16_ranking() if g in self.by_name]
            limit = min(self.max_float, len(order))
            if limit == 0 or not self.check(order[:limit], "prefix", order[limit - 1] if limit else None,
                                            int16=everything):
                return order[:limit], [g for g in everything if g not in order[:limit]], False
            chosen = self.shortest_prefix(order[:limit], lambda prefix: self.check(
                prefix, "prefix", prefix[-1], int16=everything))
        rest = [g for g in everything if g not in chosen]
        if chosen and self.check(chosen, "int8", None, int16=[]):
            return chosen, [], True
        int16 = self.shortest_prefix(rest, lambda prefix: self.check(chosen, "int16", prefix[-1], int16=prefix))
        return chosen, int16, True

    def bisect(self) -> list[str]:
        """Shortest prefix of the ranked groups that holds on the slice (prefixes only get more
        accurate as groups are added): ceil(log2(limit)) + 1 evaluations."""
        limit = min(self.max_float, len(self.ranked))
        if limit == 0 or not self.check(self.ranked[:limit], "prefix", self.ranked[limit - 1] if limit else None):
            return self.ranked[:limit]
        # the empty prefix (all int8) was checked and fails; the longest holds
        return self.shortest_prefix(self.ranked[:limit], lambda prefix: self.check(prefix, "prefix", prefix[-1]))

    def plan_int8(self) -> list[str]:
        """Float groups on the int8 -> float ladder: none if all int8 holds, else the shortest
        ranked prefix, pruned."""
        if self.check([], "int8", None):
            return []
        self.pruned_from = self.bisect()
        started = time.perf_counter()
        chosen = self.prune(self.pruned_from)
        self.prune_seconds = time.perf_counter() - started
        return chosen

    def known(self, chosen: list[str]) -> bool | None:
        """What the steps so far already say about `chosen` float: more float never loses accuracy
        (the bisection's assumption too), so a subset of a failing set fails and a superset of a
        holding one holds; None when no step decides it."""
        trial = set(chosen)
        for step in self.steps:
            if step.evaluator != self.search_name or step.int16_groups:
                continue
            if not step.holds and trial <= set(step.float_groups):
                return False
            if step.holds and trial >= set(step.float_groups):
                return True
        return None

    def prune(self, chosen: list[str], confirming: bool = False) -> list[str]:
        """Return float groups to int8 where the budget still holds without them. A small set
        (<= PRUNE_LIMIT groups): one evaluation per group. A large one: group testing, because the
        ranking (output SQNR, each group alone, few samples) puts harmless groups inside the prefix
        when the loss is spread thinly: try returning batches, least damaging first (halves, then
        quarters, ... a failing batch splits in two), keep every return that holds, and stop after
        PRUNE_EVALUATIONS evaluations or PRUNE_SECONDS."""
        if len(chosen) > PRUNE_LIMIT:
            return self.prune_batches(chosen, confirming)
        for name in reversed(list(chosen)):
            trial = [g for g in chosen if g != name]
            if self.check(trial, "remove", name, confirming):
                chosen = trial
            else:
                self.steps[-1].action = "keep"
        return chosen

    def prune_batches(self, chosen: list[str], confirming: bool = False) -> list[str]:
        """Group testing over a large float set (see `prune`), breadth first so that big batches
        are tried before the evaluations run out; a batch whose answer the earlier steps already
        imply (`known`: e.g. a tail of the ranked prefix, which the bisection saw fail) costs none."""
        deadline = time.perf_counter() + PRUNE_SECONDS
        pending, evaluations = [list(reversed(chosen))], 0  # least damaging first
        while pending and evaluations < PRUNE_EVALUATIONS and time.perf_counter() < deadline:
            batch = pending.pop(0)
            trial = [g for g in chosen if g not in batch]
            holds = None if confirming else self.known(trial)
            if holds is None:
                holds = self.check(trial, "remove", f"{batch[0]} (+{len(batch) - 1})" if len(batch) > 1
                                   else batch[0], confirming)
                evaluations += 1
                if not holds:
                    self.steps[-1].action = "keep"
            if holds:
                chosen = trial
            elif len(batch) > 1:
                pending += [batch[:len(batch) // 2], batch[len(batch) // 2:]]
        return chosen

    def escalate(self, chosen: list[str]) -> tuple[list[str], bool]:
        """The confirming backend disagrees with the slice: double the float set (next ranked groups)
        and confirm again, until it holds or the allowance is spent: at most log2(N) backend runs."""
        limit = min(self.max_float, len(self.ranked))
        while len(chosen) < limit:
            size = min(limit, max(2 * len(chosen), len(chosen) + 1))
            chosen = chosen + [g for g in self.ranked if g not in chosen][:size - len(chosen)]
            if self.check(chosen, "grow", chosen[-1], confirming=True):
                return chosen, True
        return chosen, False


    def escalate_levels(self, chosen: list[str], order: list[str]) -> tuple[list[str], list[str], bool]:
        """The backend disagrees with the emulated plan: every group that is not float goes int16,
        then the float set doubles along the int16 ranking (the rest int16): at most log2(N) + 1
        more backend runs."""
        int16 = [g for g in self.ranked if g not in chosen]
        if self.check(chosen, "grow", None, confirming=True, int16=int16):
            return chosen, int16, True
        limit = min(self.max_float, len(order))
        while len(chosen) < limit:
            size = min(limit, max(2 * len(chosen), len(chosen) + 1))
            chosen = chosen + [g for g in order if g not in chosen][:size - len(chosen)]
            int16 = [g for g in self.ranked if g not in chosen]
            if self.check(chosen, "grow", chosen[-1], confirming=True, int16=int16):
                return chosen, int16, True
        return chosen, int16, False

CONFIRMING = ("confirm", "grow")


def _cached(evaluate: Evaluate) -> Evaluate:
    """The same variant is measured once (bisection's last prefix is the confirmation); a run the
    search stopped early (`stopped_after`) answers only later calls that would stop too."""
    results: dict[tuple, dict] = {}

    def cached(nodes, int16_nodes=None, **early) -> dict:
        key = (frozenset(nodes), None if not int16_nodes else frozenset(int16_nodes))
        if key not in results or ("stopped_after" in results[key] and not early):
            args = (set(key[0]),) if key[1] is None else (set(key[0]), set(key[1]))
            results[key] = evaluate(*args, **early)
        return results[key]

    return cached


def stops_early(evaluate) -> bool:
    """Does the backend's evaluator take `stop` (a partial run rejected by Budget.cannot_hold)?"""
    try:
        return "stop" in inspect.signature(evaluate).parameters
    except (TypeError, ValueError):
        return False


def damage_order(alone, metric: str) -> tuple:
    """Sort key, most damaging first: output SQNR (it ranks well on few samples); for a CTC-reading
    budget the groups that alone change a reading come first (the budget's own measure), so the
    bisection's prefix does not float SQNR-heavy groups that change no reading ahead of them."""
    reading = alone.sequence_agreement if metric == "sequence" and alone.sequence_agreement is not None else 1.0
    return (reading, alone.sqnr_db, alone.argmax_agreement)


def rank_groups(evaluator: VariantEvaluator, metric: str, samples: int = RANK_SAMPLES,
                groups: list[NodeGroup] | None = None, int16: bool = False) -> SensitivityReport:
    """Sensitivity order from one pass: each group quantized alone (everything else float), most
    damaging (lowest output SQNR) first. With a target placement each pass is one run of the
    switchable session on `samples` samples; otherwise one Q/DQ model per group. `groups` default
    to the evaluator's; `int16`: each group alone on its 16x8 grids (the planner's int16 level)."""
    groups = evaluator.groups() if groups is None else groups
    if not groups:
        raise UserError("no quantizable nodes with calibration ranges in the model; nothing to plan")
    fp32, int8 = evaluator.reference_metrics(), evaluator.evaluate(set())
    scored = [NodeSensitivity(g, evaluator.evaluate_alone(g, samples, int16=int16), None, 0.0) for g in groups]
    scored.sort(key=lambda n: damage_order(n.only, metric))
    return SensitivityReport(metric, len(evaluator), fp32, int8, scored, evaluator.symmetric,
                             evaluator.placement_description)


def plan_mixed_precision(model: onnx.ModelProto, calibration: CalibrationResult, dataset, budget, *,
                         target, metric: str = "auto", max_float: int | None = None,
                         evaluate: Evaluate | None = None, max_samples: int | None = 64,
                         sensitivity: SensitivityReport | None = None,
                         rank_samples: int = RANK_SAMPLES, levels=None, backend: dict | None = None) -> PrecisionPlan:
    """Fewest float node groups such that the budget holds (see module docstring).

    `evaluate(float_nodes[, int16_nodes]) -> metrics dict` (keys as results.json 'accuracy': top1,
    fp32_top1, argmax_agreement, sqnr_db) confirms with the real backend; default: the target's
    ORT Q/DQ simulation on all of `dataset`. `levels` (default: the target's) with int16 needs
    the target's `int16_placement` and that backend. `backend`: the build's `backend.*` settings
    (the placement emulated is the one they make).
    """
    started = time.perf_counter()
    levels = tuple(levels or DEFAULT_LEVELS)
    target.check_precision_settings(PrecisionSettings(levels=levels))  # int16 only where the target has it
    if evaluate is None:
        levels = tuple(level for level in levels if level != "int16")  # int16 is confirmed on the backend
    with_int16 = "int16" in levels
    search_ev = VariantEvaluator(model, calibration, dataset, target=target, max_samples=max_samples,
                                 use_placement=True, int16=with_int16, backend=backend)
    if with_int16 and search_ev.placement is None:
        raise UserError(f"precision.levels: target '{target.name}' has no 16x8 placement; use levels: [int8, float]")
    spec = Budget.parse(budget, metric, search_ev.labels is not None)
    report = sensitivity or rank_groups(search_ev, spec.metric, rank_samples)
    ranking_evaluations = search_ev.evaluations
    if evaluate is not None:
        confirm, confirm_name = _cached(evaluate), "backend"
    elif len(search_ev) == len(dataset):
        confirm, confirm_name = (lambda nodes: search_ev.evaluate(nodes).to_dict()), "full"
    else:
        full_ev = VariantEvaluator(model, calibration, dataset, target=target, max_samples=None, use_placement=True,
                                   backend=backend)
        confirm, confirm_name = (lambda nodes: full_ev.evaluate(nodes).to_dict()), "full"
    groups = report.ranked_groups()
    if evaluate is not None and search_ev.placement is not None and not with_int16:
        # the backend's own kernels on the whole eval set decide the bisection too: an emulated
        # slice that holds where the backend does not would end in a doubled float set; the
        # switchable emulation's job is the one-pass ranking, where it is the cheap part. With
        # int16 the emulation searches (LiteRT's 16x8 kernels are far slower than its XNNPACK int8)
        search, search_name = confirm, "backend"
    else:
        search, search_name = (lambda nodes, int16=(): search_ev.evaluate(nodes, int16).to_dict()), "slice"
    planner = _Planner(groups, spec, search, confirm, confirm_name, max_float, search_name)
    if search_name == "backend" and stops_early(evaluate):
        planner.stop = spec.cannot_hold

    chosen: list[str] = []
    int16_groups: list[str] = []
    int16_order: list[str] = []

    def int16_ranking() -> list[str]:
        """Groups by their int16-alone damage (lowest output SQNR first), on the same session."""
        if not int16_order:
            ranked = rank_groups(search_ev, spec.metric, rank_samples, groups, int16=True)
            int16_order.extend(n.group.name for n in ranked.nodes)
        return int16_order

    if with_int16:
        chosen, int16_groups, met = planner.levels(int16_ranking)
        met = planner.check(chosen, "confirm", None, confirming=True, int16=int16_groups)
        if not met:
            chosen, int16_groups, met = planner.escalate_levels(chosen, int16_ranking())
        int16_ranking_evaluations = len(int16_order)
    else:
        int16_ranking_evaluations = 0
        chosen = planner.plan_int8()
        met = planner.check(chosen, "confirm", None, confirming=True)
        if not met:
            chosen, met = planner.escalate(chosen)
    final = planner.steps[-1].metrics
    reason = _reason(spec, met, chosen, planner, final, int16_groups)
    float_nodes = planner.nodes(chosen)
    capable = search_ev.placement.int16_nodes if search_ev.placement is not None else frozenset()
    int16_nodes = (planner.nodes(int16_groups) & capable) - float_nodes
    search = {"seconds": round(time.perf_counter() - started, 2), "groups": len(groups),
              "ranking_evaluations": ranking_evaluations, "rank_samples": rank_samples,
              "int16_ranking_evaluations": int16_ranking_evaluations,
              "search_evaluations": sum(1 for s in planner.steps if s.action not in CONFIRMING),
              "confirm_evaluations": sum(1 for s in planner.steps if s.action in CONFIRMING),
              "early_rejects": sum(1 for s in planner.steps if "stopped_after" in s.metrics),
              "search_on": search_name, "confirm_on": confirm_name, "levels": list(levels),
              "samples": len(search_ev), "sessions_built": search_ev.sessions_built,
              "emulation": search_ev.placement_description}
    search.update(int8_ops(model, search_ev, float_nodes, int16_nodes))
    if planner.pruned_from:
        search["prune"] = {"groups_before": len(planner.pruned_from), "groups_after": len(chosen),
                           "evaluations": sum(1 for s in planner.steps if s.action in ("remove", "keep")),
                           "seconds": round(planner.prune_seconds, 2),
                           "int8_ops_before": int8_ops(model, search_ev, planner.nodes(planner.pruned_from))["int8_ops"]}
    return PrecisionPlan(float_nodes, chosen, planner.steps, final, met, reason, spec, report,
                         len(groups), search, int16_nodes, int16_groups, levels)


def plan_on_target(model: onnx.ModelProto, calibration: CalibrationResult, dataset, budget, target,
                   backend_settings: dict | None, **options) -> PrecisionPlan:
    """`plan_mixed_precision` confirmed by the target's own evaluator (its real kernels where they
    run on this host, e.g. LiteRT for arm-cpu), as `build` and `sensitivity --budget` both plan."""
    backend = {k: v for k, v in (backend_settings or {}).items() if v is not None}
    return plan_mixed_precision(model, calibration, dataset, budget, target=target,
                                evaluate=target.evaluator(model, calibration, dataset, backend), backend=backend,
                                **options)


def _reason(budget: Budget, met: bool, chosen: list[str], planner: _Planner, final: dict,
            int16: list[str] = ()) -> str:
    measured = budget.measure(final)
    unit = " dB" if budget.metric == "sqnr" else ""
    if met:
        if not chosen and not int16:
            return f"all-INT8 meets the budget ({budget.describe()}: {measured:.4g}{unit})"
        moved = f"{len(chosen)} of {len(planner.ranked)} quantized node groups kept float"
        if int16:
            moved = f"{len(int16)} of {len(planner.ranked)} quantized node groups int16 (16x8), {len(chosen)} float"
        return f"{moved} to meet {budget.describe()} ({measured:.4g}{unit})"
    if len(chosen) >= planner.max_float and len(chosen) < len(planner.ranked):
        return (f"budget {budget.describe()} not met with max_float={planner.max_float} float groups "
                f"({measured:.4g}{unit}); raise max_float or relax the budget")
    return (f"budget {budget.describe()} not met even with all {len(planner.ranked)} quantized node groups "
            f"float ({measured:.4g}{unit}): the loss is not from INT8 layers; relax the budget or check the "
            f"backend/eval data")


__all__ = ["plan_mixed_precision", "plan_on_target", "plan_summary", "summary_line", "PrecisionPlan", "PlanStep",
           "Budget"]
