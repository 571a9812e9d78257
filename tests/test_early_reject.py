"""The planner's early reject: a partly run evaluation stopped because even its best case breaks
the budget must give the same accept/reject answer as the full run, for every budget form."""

from __future__ import annotations

import numpy as np
import pytest

from edgepipe import quantmath
from edgepipe.accuracy.budget import Budget
from edgepipe.backends.tflite.evaluate import STOP_CHUNK, Reference, measure


def sequence_case(seed: int, samples: int = 70, steps: int = 12, classes: int = 6):
    """FP32 CTC logits and a test model that changes the argmax of a random share of steps."""
    rng = np.random.default_rng(seed)
    reference = [{"logits": rng.normal(size=(1, steps, classes)).astype(np.float32)} for _ in range(samples)]
    flip = rng.uniform(0.0, 0.12)
    tests = []
    for r in reference:
        out = r["logits"] + rng.normal(scale=0.05, size=r["logits"].shape).astype(np.float32)
        for t in np.flatnonzero(rng.uniform(size=steps) < flip):
            out[0, t, rng.integers(classes)] += 10.0
        tests.append({"logits": out})
    return reference, tests


def classifier_case(seed: int, samples: int = 70, classes: int = 5):
    rng = np.random.default_rng(seed)
    reference = [{"logits": rng.normal(size=(1, classes)).astype(np.float32)} for _ in range(samples)]
    labels = np.array([int(r["logits"].argmax()) if rng.uniform() < 0.9 else int(rng.integers(classes))
                       for r in reference])
    wrong = rng.uniform(0.0, 0.15)
    tests = [{"logits": r["logits"] + (10.0 * np.eye(classes, dtype=np.float32)[rng.integers(classes)]
                                       if rng.uniform() < wrong else 0.0)} for r in reference]
    return reference, tests, labels


def decisions(reference: Reference, tests: list[dict], budget: Budget) -> tuple[bool, bool, int | None]:
    full = measure(reference, iter(tests))
    early = measure(reference, iter(tests), stop=budget.cannot_hold)
    return budget.holds(full), budget.holds(early), early.get("stopped_after")


@pytest.mark.parametrize("form", ["sequence", "agreement", "top1"])
def test_early_reject_gives_the_full_runs_answer(form):
    stopped = accepted = 0
    for seed in range(40):
        if form == "top1":
            ref_outputs, tests, labels = classifier_case(seed)
        else:
            ref_outputs, tests = sequence_case(seed)
            labels = None
        reference = Reference(ref_outputs, labels)
        full = measure(reference, iter(tests))
        # budgets around the measured drop, the exact value included (the boundary case)
        drop = Budget({"sequence": "sequence", "agreement": "agreement", "top1": "top1"}[form], 0.0).measure(full)
        for limit in (0.0, drop / 2, drop, drop + 1e-6, 2 * drop, 0.05):
            budget = Budget(form, max(0.0, limit))
            holds_full, holds_early, after = decisions(reference, tests, budget)
            assert holds_early == holds_full, (seed, limit, after)
            if after is not None:
                stopped += 1
                assert after % STOP_CHUNK == 0 and after < len(tests)
            accepted += holds_full
    assert stopped > 10 and accepted > 10  # both outcomes occur: the test can fail either way


def test_full_metrics_match_an_independent_computation():
    ref_outputs, tests = sequence_case(3)
    metrics = measure(Reference(ref_outputs), iter(tests))
    want = np.concatenate([r["logits"] for r in ref_outputs])
    got = np.concatenate([t["logits"] for t in tests])
    assert metrics["sequence_agreement"] == pytest.approx(quantmath.ctc_sequence_agreement(want, got), abs=1e-12)
    assert metrics["argmax_agreement"] == pytest.approx(float(np.mean(want.argmax(-1) == got.argmax(-1))), abs=1e-12)
    assert metrics["sqnr_db"] == pytest.approx(quantmath.sqnr_db(want, got), abs=1e-9)
    assert metrics["cosine"] == pytest.approx(quantmath.cosine(want, got), abs=1e-12)
    assert "stopped_after" not in metrics


def test_the_optimistic_bound_never_undershoots_the_final_agreement():
    ref_outputs, tests = sequence_case(5)
    reference = Reference(ref_outputs)
    final = measure(reference, iter(tests))
    seen = []
    measure(reference, iter(tests), stop=lambda optimistic: seen.append(optimistic) and False)
    assert len(seen) == (len(tests) - 1) // STOP_CHUNK
    for optimistic in seen:
        assert optimistic["sequence_agreement"] >= final["sequence_agreement"] - 1e-12
        assert optimistic["argmax_agreement"] >= final["argmax_agreement"] - 1e-12
    assert [o["sequence_agreement"] for o in seen] == sorted((o["sequence_agreement"] for o in seen), reverse=True)


def test_an_sqnr_budget_never_stops_early():
    ref_outputs, tests = sequence_case(7)
    budget = Budget("sqnr", 200.0)  # far out of reach: still run to the end (no bound on SQNR)
    metrics = measure(Reference(ref_outputs), iter(tests), stop=budget.cannot_hold)
    assert "stopped_after" not in metrics and not budget.holds(metrics)
