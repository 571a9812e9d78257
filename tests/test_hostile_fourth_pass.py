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
