"""The build's checks share int8 simulations (Target.sharing_simulations) and derive the
output-effect check's round models from the chosen one (Target.qdq_variants): the same models
and numbers, fewer builds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgepipe.calibrate import calibrate, stability
from edgepipe.targets import load_target
from tests.helpers import ArrayDataset, tiny_conv_model




@pytest.fixture(scope="module")
def drifting():
    """tiny_conv_model calibrated on a set whose scale changes from round to round (unstable)."""
    model = tiny_conv_model()
    x = np.random.default_rng(2).normal(size=(64, 3, 8, 8)) * np.repeat([0.3, 1.0, 1.0, 3.0], 16)[:, None, None, None]
    return model, calibrate(model, ArrayDataset(x), {"method": "mse"}), ArrayDataset(x)


def counting_builds(monkeypatch) -> list:
    from edgepipe.backends import qdq

    calls = []
    original = qdq.simulated_int8_model

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(qdq, "simulated_int8_model", counted)
    return calls


def test_a_state_is_built_once_inside_the_scope_and_every_time_outside(drifting, monkeypatch):
    model, calibration, _ = drifting
    calls = counting_builds(monkeypatch)
    target = load_target("jetson")
    with target.sharing_simulations():
        first, report = target.qdq_model(model, calibration)
        again, _ = target.qdq_model(model, dataclasses.replace(calibration))  # an equal copy: the same state
        session = target.int8_session(model, calibration)
        assert again is first and target.int8_session(model, calibration) is session and len(calls) == 1
        corrected = dataclasses.replace(calibration, bias_corrections={"conv": [0.5, 0.0, 0.0, 0.0]})
        other, _ = target.qdq_model(model, corrected)
        assert other is not first and len(calls) == 2
        assert target.qdq_model(model, calibration, keep_float={"conv"})[0] is not first and len(calls) == 3
    fresh, fresh_report = target.qdq_model(model, calibration)
    assert fresh is not first and len(calls) == 4 and fresh_report == report
    assert fresh.SerializeToString() == first.SerializeToString()


def test_shared_outputs_equal_fresh_ones(drifting):
    model, calibration, data = drifting
    target = load_target("jetson")
    feeds = [data.sample(i) for i in range(4)]
    fresh, _ = target.int8_outputs(model, calibration, feeds, {})
    with target.sharing_simulations():
        target.int8_outputs(model, calibration, feeds, {})
        shared, _ = target.int8_outputs(model, calibration, feeds, {})
    for a, b in zip(fresh, shared):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_output_effect_with_shared_session_and_variants_gives_the_same_numbers(drifting, monkeypatch):
    """The build's output-effect check (the bias check's session for the chosen thresholds, the
    rounds' models derived from the chosen one) measures what building every candidate measures,
    with one Q/DQ build instead of five."""
    model, calibration, data = drifting
    target = load_target("jetson")

    def quantize(m, c):
        return target.qdq_model(m, c)[0]

    expected = stability.output_effect(model, calibration, data, quantize)
    calls = counting_builds(monkeypatch)
    with target.sharing_simulations():
        target.int8_session(model, calibration)  # as the bias check leaves it
        shared = stability.output_effect(model, calibration, data, quantize,
                                         chosen_session=lambda c: target.int8_session(model, c),
                                         variants=target.qdq_variants(model, calibration))
    assert shared == expected and expected["samples"] == stability.EFFECT_SAMPLES and len(calls) == 1


@pytest.mark.parametrize("target_name", ["jetson", "arm-cpu"])
def test_round_variants_are_the_models_a_rebuild_gives(drifting, target_name):
    """Target.qdq_variants derives each round's Q/DQ model from the chosen one: byte for byte the
    model qdq_model builds for that round (symmetric and asymmetric activations)."""
    model, calibration, _ = drifting
    target = load_target(target_name)
    names = stability.unstable_tensors(calibration)
    variants = target.qdq_variants(model, calibration)
    rounds = len(calibration.tensors[names[0]].stability["round_amax"])
    for r in range(rounds):
        candidate = stability.round_calibration(calibration, r, names)
        derived = variants(candidate, names)
        rebuilt = target.qdq_model(model, candidate)[0]
        assert derived.SerializeToString() == rebuilt.SerializeToString(), (target_name, r)
    assert variants(calibration, names).SerializeToString() == target.qdq_model(model, calibration)[0].SerializeToString()


def test_a_target_with_its_own_qdq_model_gets_no_variants(drifting):
    model, calibration, _ = drifting

    class Own(type(load_target("jetson"))):
        def qdq_model(self, model, calibration, keep_float=frozenset()):
            return super().qdq_model(model, calibration, keep_float)

    assert Own().qdq_variants(model, calibration) is None


class CountedSession:
    """An ONNX Runtime session that counts its runs (run_feeds calls it from two threads)."""

    def __init__(self, session):
        self.session, self.runs = session, []

    def run(self, names, feed):
        self.runs.append(1)
        return self.session.run(names, feed)

    def get_outputs(self):
        return self.session.get_outputs()


def test_output_effect_takes_known_chosen_outputs_and_runs_only_the_rest(drifting):
    """Outputs of the chosen thresholds' simulation that the caller ran already (the bias check's
    held-out samples) are used as they are: the same numbers, those samples not run again."""
    from edgepipe.calibrate.collector import sample_indices

    model, calibration, data = drifting
    target = load_target("jetson")

    def quantize(m, c):
        return target.qdq_model(m, c)[0]

    expected = stability.output_effect(model, calibration, data, quantize)
    indices = sample_indices(len(data), stability.EFFECT_SAMPLES)
    known_at = indices[1::2] + [len(data) + 5]  # half of the check's samples, and one it does not use
    names = [o.name for o in model.graph.output]
    outputs, _ = target.int8_outputs(model, calibration, [data.sample(i % len(data)) for i in known_at], {})
    known = {i: [o[name] for name in names] for i, o in zip(known_at, outputs)}
    session = CountedSession(target.int8_session(model, calibration))
    got = stability.output_effect(model, calibration, data, quantize, chosen_session=lambda c: session,
                                  chosen_outputs=known)
    assert got == expected and len(session.runs) == len(indices) - len(indices[1::2])


def test_bias_check_hands_over_the_kept_state_outputs(drifting):
    """checked_bias_corrections(kept_outputs=...) receives, per held-out sample, the int8 outputs
    of the state it kept: what that state's simulation gives when run afresh."""
    from edgepipe.calibrate.bias_correction import checked_bias_corrections, split_for_check

    model, calibrated, data = drifting
    calibration = dataclasses.replace(calibrated, bias_corrections={})
    target = load_target("jetson")
    kept: dict = {}
    with target.sharing_simulations():
        report = checked_bias_corrections(model, calibration, data, target, {}, kept)
    held = [int(i) for i in split_for_check(len(data))[1]]
    assert sorted(kept) == held and report["held_out"] == len(held)
    assert bool(calibration.bias_corrections) == report["kept"]
    fresh, _ = target.int8_outputs(model, calibration, [data.sample(i) for i in held], {})
    names = [o.name for o in model.graph.output]
    for i, outputs in zip(held, fresh):
        assert all(np.array_equal(value, outputs[name]) for value, name in zip(kept[i], names))


@pytest.mark.parametrize("target_name,handed_over", [("jetson", True), ("arm-cpu", False)])
def test_build_checks_hand_over_outputs_only_from_the_effect_checks_simulation(drifting, monkeypatch, target_name,
                                                                                handed_over):
    """jetson's bias check runs the Q/DQ simulation the output-effect check measures: its kept
    outputs are handed over; arm-cpu's runs the .tflite, whose outputs are not the simulation's."""
    from edgepipe import build_checks

    model, calibrated, data = drifting
    calibration = dataclasses.replace(calibrated, bias_corrections={})
    seen = {}
    original = stability.output_effect

    def recording(*args, **kwargs):
        seen["chosen_outputs"] = kwargs.get("chosen_outputs")
        return original(*args, **kwargs)

    monkeypatch.setattr(stability, "output_effect", recording)

    class Pipeline:
        def run(self, name, compute, **_):
            return compute()

    effect, _ = build_checks.run_checks(Pipeline(), model, calibration, data, load_target(target_name), {}, "auto")
    assert effect is not None
    if handed_over:
        from edgepipe.calibrate.collector import sample_indices

        wanted = set(sample_indices(len(data), stability.EFFECT_SAMPLES))
        assert seen["chosen_outputs"] and set(seen["chosen_outputs"]) <= wanted
    else:
        assert seen["chosen_outputs"] is None


def test_build_checks_fold_each_weight_once_with_the_same_numbers(drifting, monkeypatch):
    """The checks' simulations (bias estimate, held-out states, the output-effect rounds) share
    one weight-folding cache (Target.weight_folds): ONNX Runtime quantizes the weights once, not
    once per simulation, and every number is what folding afresh each time gives."""
    from edgepipe import build_checks, graph
    from edgepipe.targets import Target

    model, calibrated, data = drifting

    class Pipeline:
        def run(self, name, compute, **_):
            return compute()

    original = graph.make_session
    folds = []

    def counted(model_or_path, *args, **kwargs):
        if getattr(getattr(model_or_path, "graph", None), "name", "") == "constant_QuantizeLinear":
            folds.append(1)
        return original(model_or_path, *args, **kwargs)

    def checks():
        calibration = dataclasses.replace(calibrated, bias_corrections={})
        effect, warning = build_checks.run_checks(Pipeline(), model, calibration, data, load_target("jetson"), {},
                                                  "auto")
        return effect, warning, calibration.bias_corrections, calibration.bias_correction

    monkeypatch.setattr(graph, "make_session", counted)
    shared = checks()
    assert len(folds) == 1 and shared[0] is not None and shared[3]["held_out"] > 0
    monkeypatch.setattr(Target, "weight_folds", lambda self: None)  # each simulation folds afresh
    folds.clear()
    assert checks() == shared and len(folds) > 1
