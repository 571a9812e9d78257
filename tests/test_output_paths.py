"""Output files the user names (--out, --junit, report -o) never replace an input, a bundle's files or a
user's file of another kind; each is refused in one line before any work (edgepipe/output_files.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edgepipe.cli.main import main
from tests.bad_input_cases import write_small_bundle
from tests.test_bad_inputs import run_main

RESULTS = {"model": "m", "target": "t", "accuracy": {"top1": 0.9}, "latency_ms": {"p50": 1.0, "p90": 1.1, "p99": 1.2}}


def _results(tmp_path):
    for name in ("base.json", "cand.json"):
        (tmp_path / name).write_text(json.dumps(RESULTS))
    return tmp_path / "base.json", tmp_path / "cand.json"


def _refused(args, tmp_path, capsys, *fragments):
    code, err = run_main(args, tmp_path, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_junit_over_the_baseline_is_refused(tmp_path, capsys):
    base, cand = _results(tmp_path)
    before = base.read_bytes()
    _refused(["regress", "--baseline", str(base), "--candidate", str(cand), "--junit", str(base)], tmp_path, capsys,
             "base.json", "--junit names the --baseline")
    assert base.read_bytes() == before


def test_junit_through_a_linked_input_is_refused(tmp_path, capsys):
    base, cand = _results(tmp_path)
    (tmp_path / "link.json").symlink_to(cand)
    _refused(["regress", "--baseline", str(base), "--candidate", str(tmp_path / "link.json"), "--junit", str(cand)],
             tmp_path, capsys, "--junit names the --candidate")
    assert json.loads(cand.read_text()) == RESULTS


def test_junit_link_is_replaced_not_written_through(tmp_path, capsys):
    base, cand = _results(tmp_path)
    victim = tmp_path / "victim.xml"
    victim.write_text("<keep/>")
    (tmp_path / "j.xml").symlink_to(victim)
    with pytest.raises(SystemExit) as info:
        main(["regress", "--baseline", str(base), "--candidate", str(cand), "--junit", str(tmp_path / "j.xml")])
    assert info.value.code in (0, None)
    assert victim.read_text() == "<keep/>"
    assert not (tmp_path / "j.xml").is_symlink() and "<testsuites" in (tmp_path / "j.xml").read_text()


def test_junit_over_a_user_file_of_another_kind_is_refused(tmp_path, capsys):
    base, cand = _results(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes\n")
    _refused(["regress", "--baseline", str(base), "--candidate", str(cand), "--junit", str(tmp_path / "notes.txt")],
             tmp_path, capsys, "notes.txt", "is not an XML file")
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"


def test_compare_out_inside_the_bundle_is_refused_before_any_work(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    write_small_bundle(bundle)
    model = (bundle / "model.bin").read_bytes()
    _refused(["compare", str(bundle), "--out", str(bundle / "model.bin")], tmp_path, capsys,
             "model.bin", "inside the bundle")
    assert (bundle / "model.bin").read_bytes() == model


def test_compare_out_over_a_user_data_file_is_refused(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    write_small_bundle(bundle)
    np.savez(tmp_path / "calib.npz", x=np.zeros(3, np.float32))
    _refused(["compare", str(bundle), "--out", str(tmp_path / "calib.npz")], tmp_path, capsys,
             "calib.npz", "is not a JSON file")
    assert np.load(tmp_path / "calib.npz")["x"].shape == (3,)


def test_report_into_a_bundle_root_is_refused(tmp_path, capsys):
    from edgepipe.delivery.bundle import verify_bundle

    bundle = tmp_path / "bundle"
    write_small_bundle(bundle)
    base, _ = _results(tmp_path)
    _refused(["report", str(base), "-o", str(bundle)], tmp_path, capsys, "inside the bundle")
    assert verify_bundle(bundle) == []
    with pytest.raises(SystemExit) as info:  # the bundle's own report/ folder is where reports go
        main(["report", str(base), "-o", str(bundle / "report")])
    assert info.value.code in (0, None) and (bundle / "report" / "report.html").is_file()
    assert verify_bundle(bundle) == []


def test_sensitivity_out_over_its_model_is_refused_before_any_work(tmp_path, capsys):
    from tests.bad_input_cases import _calib, _model

    model, calib = _model(tmp_path), _calib(tmp_path)
    before = model.read_bytes()
    _refused(["sensitivity", str(model), "--calib", str(calib), "--out", str(model)], tmp_path, capsys,
             "--out names the --model")
    assert model.read_bytes() == before


def test_finetune_out_over_its_weights_is_refused_before_training(tmp_path, capsys):
    from edgepipe import demo

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"the user's only checkpoint")
    _refused(["finetune", "--model", demo.DEMO_FACTORY, "--weights", str(weights), "--train", str(tmp_path),
              "--out", str(weights)], tmp_path, capsys, "--out names the --weights")
    assert weights.read_bytes() == b"the user's only checkpoint"
    assert not os.path.exists(tmp_path / "w.ranges.json")
