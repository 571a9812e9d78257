"""Fourth hostile-input pass: findings that need more than a bad-input table row."""

from __future__ import annotations

import pytest


def test_negative_variance_with_the_fold_off_names_the_batchnorm(tmp_path, capsys):
    """With fold.batchnorm off the BN stays in the graph; the NaN it makes was reported without a
    cause ('check that sample's preprocessing') because no constant holds NaN."""
    from tests.bad_input_cases import negative_variance
    from tests.test_bad_inputs import run_main

    args = negative_variance(tmp_path)
    (tmp_path / "edgepipe.yaml").write_text("fold:\n  batchnorm: false\n")
    code, err = run_main([*args, "--config", str(tmp_path / "edgepipe.yaml")], tmp_path, capsys)
    assert code == 2, err
    assert "node 'my_bn' (BatchNormalization) has variance -2 + epsilon 1e-05 <= 0 in channel 1" in err
    assert "the model is broken there, not the data" in err


def test_report_replaces_its_own_report_but_not_a_user_file(tmp_path, capsys):
    """Rerunning `edgepipe report` replaces the report it wrote (html and md); a user's report.html
    beside the results is left as it was, with nothing written."""
    from tests.bad_input_cases import _results
    from tests.test_bad_inputs import run_main

    results = _results(tmp_path, "results.json")
    for _ in range(2):
        code, err = run_main(["report", str(results)], tmp_path, capsys)
        assert code in (0, None), err
    assert (tmp_path / "report.md").read_text().startswith("# edgepipe report:")
    (tmp_path / "report.md").unlink()
    (tmp_path / "report.html").write_text("<html><title>my board notes</title></html>")
    code, err = run_main(["report", str(results)], tmp_path, capsys)
    assert code == 2 and "report.html: exists and is not a report edgepipe wrote" in err, err
    assert (tmp_path / "report.html").read_text() == "<html><title>my board notes</title></html>"
    assert not (tmp_path / "report.md").exists()
