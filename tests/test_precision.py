"""Mixed-precision planner: meets the budget with the fewest float groups (checked by brute force)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from edgepipe import quantmath
from edgepipe.errors import BudgetError, UserError
from edgepipe.accuracy.precision import (PRUNE_EVALUATIONS, PRUNE_LIMIT, Budget, _Planner, plan_mixed_precision,
                                         rank_groups)
from edgepipe.accuracy.sensitivity import Metrics, NodeGroup, VariantEvaluator
from tests.test_sensitivity import GPU, calibrated, npz_dataset, outlier_mlp

BUDGET = 0.02  # at most 2% of argmax decisions may change vs FP32


@pytest.fixture(scope="module")
def two_outlier_case(tmp_path_factory):
    """Outliers feed fc2 and fc3: INT8 changes >2% of decisions unless both stay float."""
    tmp = tmp_path_factory.mktemp("precision")
    model = outlier_mlp({1: 30.0, 2: 30.0})
    return model, calibrated(model, tmp), npz_dataset(tmp, "eval", 160, seed=2)


def smallest_passing_size(model, calibration, dataset, groups) -> int:
    """Brute force: the size of the smallest set of groups whose float variant meets the budget."""
    evaluator = VariantEvaluator(model, calibration, dataset, target=GPU, max_samples=None)
    for size in range(len(groups) + 1):
        for subset in itertools.combinations(groups, size):
            metrics = evaluator.evaluate({n for g in subset for n in g.nodes})
            if 1.0 - metrics.argmax_agreement <= BUDGET:
                return size
    raise AssertionError("even all-float misses the budget")


def test_plan_meets_budget_with_fewest_float_groups(two_outlier_case):
    model, calibration, dataset = two_outlier_case
    plan = plan_mixed_precision(model, calibration, dataset, BUDGET, target=GPU, max_samples=64)
    int8_drop = plan.steps[0].measured
    assert plan.steps[0].action == "int8" and int8_drop > BUDGET  # plain INT8 really breaks the budget
    assert plan.met, plan.reason
    assert plan.steps[-1].evaluator == "full" and plan.steps[-1].holds  # confirmed on all 160 samples
    assert 1.0 - plan.final["argmax_agreement"] <= BUDGET
    minimum = smallest_passing_size(model, calibration, dataset, plan.sensitivity.ranked_groups())
    assert len(plan.float_groups) == minimum
    assert set(plan.float_groups) == {"fc2", "fc3"}
    assert plan.float_nodes == {"fc2", "relu2", "fc3", "relu3"}  # fused activations go float too
    json.dumps(plan.to_json(), allow_nan=False)


def test_budget_that_cannot_be_met(two_outlier_case):
    model, calibration, dataset = two_outlier_case
    limited = plan_mixed_precision(model, calibration, dataset, BUDGET, target=GPU, max_float=1, max_samples=32)
    assert not limited.met and "max_float=1" in limited.reason
    assert len(limited.float_groups) == 1
    with pytest.raises(BudgetError, match="not met"):
        limited.require()

    # a backend that itself disagrees with FP32 on 10% of inputs whatever stays float
    lossy_backend = lambda float_nodes: {"argmax_agreement": 0.9}  # noqa: E731
    plan = plan_mixed_precision(model, calibration, dataset, BUDGET, target=GPU, evaluate=lossy_backend,
                                max_samples=32)
    assert not plan.met and "even with all 4" in plan.reason
    assert plan.steps[-1].evaluator == "backend" and len(plan.float_groups) == 4


def test_sqnr_budget_and_easy_model(tmp_path):
    model = outlier_mlp({})
    calibration = calibrated(model, tmp_path)
    dataset = npz_dataset(tmp_path, "eval", 32, seed=5)
    easy = plan_mixed_precision(model, calibration, dataset, {"min_sqnr_db": 20}, target=GPU)
    assert easy.met and easy.float_nodes == set() and easy.final["sqnr_db"] >= 20
    target = easy.steps[0].measured + 3.0  # 3 dB above all-INT8: some layers must go float
    strict = plan_mixed_precision(model, calibration, dataset, {"min_sqnr_db": target}, target=GPU)
    assert strict.met and strict.float_groups and strict.final["sqnr_db"] >= target
    assert strict.steps[0].measured < target


@pytest.mark.parametrize("budget", [-0.1, "1%", {"max_dop": 0.1}, True, {"max_sequence_drop": 0.1, "max_drop": 0.1}])
def test_bad_budgets(budget):
    with pytest.raises(UserError, match="precision budget"):
        Budget.parse(budget, "auto", has_labels=False)


def _one_hot_sequence(steps: list[int], classes: int = 5) -> np.ndarray:
    out = np.full((len(steps), classes), 0.01, np.float32)
    out[np.arange(len(steps)), steps] = 0.9
    return out


def test_ctc_sequence_agreement_counts_readings_not_steps():
    """Readings (argmax, repeats merged, blank 0 dropped), checked by hand: a boundary one step
    later changes a step but not the reading; a lost character costs 1 / length."""
    fp32 = np.stack([_one_hot_sequence([0, 1, 1, 0, 2, 0]), _one_hot_sequence([3, 0, 3, 4, 0, 0])])
    shifted = np.stack([_one_hot_sequence([0, 0, 1, 0, 2, 2]), _one_hot_sequence([3, 0, 3, 4, 0, 0])])
    assert quantmath.ctc_sequence_agreement(fp32, shifted) == 1.0  # readings "1 2" and "3 3 4" kept
    lost = np.stack([_one_hot_sequence([0, 1, 1, 0, 0, 0]), _one_hot_sequence([3, 3, 3, 4, 0, 0])])
    # "1 2" -> "1": 1 - 1/2; "3 3 4" -> "3 4": 1 - 1/3
    assert quantmath.ctc_sequence_agreement(fp32, lost) == pytest.approx(np.mean([0.5, 2 / 3]))
    assert quantmath.ctc_sequence_agreement(fp32[:, 0], lost[:, 0]) is None  # not [N, T, C]


def test_sequence_budget_parses_and_needs_a_sequence_head(two_outlier_case):
    budget = Budget.parse({"max_sequence_drop": 0.01}, "auto", has_labels=True)
    assert (budget.metric, budget.limit) == ("sequence", 0.01)
    assert budget.holds({"sequence_agreement": 0.995, "argmax_agreement": 0.5})
    assert not budget.holds({"sequence_agreement": 0.98, "argmax_agreement": 1.0})
    model, calibration, dataset = two_outlier_case  # a classifier: [N, C], no readings
    with pytest.raises(UserError, match="max_sequence_drop needs a \\[N, T, C\\] sequence output"):
        plan_mixed_precision(model, calibration, dataset, {"max_sequence_drop": 0.01}, target=GPU, max_samples=16)


def test_prune_returns_harmless_groups_of_a_long_prefix_to_int8():
    """The loss sits in a few groups scattered down a noisy ranking (plus some faint ones): the
    shortest ranked prefix that holds is long and mostly harmless. Group testing returns the
    harmless groups to int8 (more than PRUNE_LIMIT: the one-by-one prune would not run) within
    PRUNE_EVALUATIONS, and the budget still holds on the evaluator."""
    names = [f"g{i}" for i in range(40)]  # ranked, most damaging first (by the ranking's estimate)
    damage = {name: 0.0 for name in names}
    damage.update({n: 0.01 for n in ("g0", "g3", "g9", "g16", "g23")})  # each breaks the budget alone
    damage.update({n: 0.0015 for n in ("g5", "g11", "g30")})  # faint: two of them fit the budget
    groups = [NodeGroup(n, "Add", (n, f"{n}_reader"), ()) for n in names]

    def evaluate(float_nodes: set) -> dict:  # the budget's own view: drop = damage of the int8 groups
        return {"argmax_agreement": 1.0 - sum(d for n, d in damage.items() if n not in float_nodes)}

    budget = Budget("agreement", 0.004)
    planner = _Planner(groups, budget, evaluate, evaluate, "backend", None)
    prefix = planner.bisect()
    assert prefix == names[:24] and len(prefix) > PRUNE_LIMIT  # g23 is the last harmful group
    before = len(planner.steps)
    pruned = planner.prune(prefix)
    assert len(planner.steps) - before <= PRUNE_EVALUATIONS
    assert budget.holds(evaluate(planner.nodes(pruned)))  # independent of the planner's steps
    assert {"g0", "g3", "g9", "g16", "g23"} <= set(pruned)
    harmless_in_prefix = [n for n in prefix if damage[n] == 0.0]
    returned = [n for n in harmless_in_prefix if n not in pruned]
    assert len(returned) >= len(harmless_in_prefix) // 2, (pruned, returned)
    assert len(pruned) < len(prefix) - PRUNE_LIMIT


class _AloneScores:
    """An evaluator whose groups-alone scores are given: what rank_groups sorts."""

    symmetric, placement_description, evaluations = True, "given scores", 0

    def __init__(self, scores: dict):
        self.scores = scores
        self._groups = [NodeGroup(n, "Add", (n,), ()) for n in scores]

    def __len__(self):
        return 2

    def groups(self):
        return self._groups

    def reference_metrics(self):
        return Metrics(float("inf"), 1.0, 1.0, sequence_agreement=1.0)

    def evaluate(self, float_nodes, int16=()):
        return Metrics(10.0, 0.9, 0.9, sequence_agreement=0.9)

    def evaluate_alone(self, group, samples=None, int16=False):
        sqnr, reading = self.scores[group.name]
        return Metrics(sqnr, 0.99, 0.99, sequence_agreement=reading)


def test_a_reading_budget_ranks_groups_that_change_a_reading_first():
    """Output SQNR alone puts a loud group that changes no reading first; the CTC-reading budget's
    ranking puts the group that alone changes a reading first, SQNR ordering the rest."""
    evaluator = _AloneScores({"loud": (12.0, 1.0), "reads": (30.0, 0.9), "quiet": (40.0, 1.0), "mid": (20.0, 1.0)})
    by_sqnr = [n.group.name for n in rank_groups(evaluator, "agreement").nodes]
    by_reading = [n.group.name for n in rank_groups(evaluator, "sequence").nodes]
    assert by_sqnr == ["loud", "mid", "reads", "quiet"]
    assert by_reading == ["reads", "loud", "mid", "quiet"]
