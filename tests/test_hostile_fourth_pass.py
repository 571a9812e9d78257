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


@pytest.mark.parametrize("scale, expected", [(1.0, 255.0), (255.0, 255.0), (1000.0, None), (-1.0, None)])
def test_float_tiff_is_read_by_its_range(tmp_path, scale, expected):
    """A float ('F') TIFF in 0..1 became 0 or 1 of 255 (all black): 0..1 is now x255, 0..255 is
    kept, and any other range is refused in one line naming the file and its range."""
    import numpy as np
    from PIL import Image

    from edgepipe.data import load_dataset
    from edgepipe.errors import UserError

    folder = tmp_path / "calib"
    folder.mkdir()
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp * np.float32(scale), "F").save(folder / "depth.tif")
    with Image.open(folder / "depth.tif") as check:
        assert check.mode == "F"
    load = lambda: load_dataset(folder, {"x": ((1, 3, 8, 8), np.dtype(np.float32))}, {"scale": 1.0}).sample(0)  # noqa: E731
    if expected is None:
        with pytest.raises(UserError, match=r"depth.tif: a float image with values from"):
            load()
        return
    x = load()["x"][0]
    assert np.array_equal(x[0], np.rint(ramp * expected)) and np.array_equal(x[2], x[0])
