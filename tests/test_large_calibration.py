"""calibration.json grows with the graph (one histogram per activation tensor): an LSTM unrolled over
hundreds of time steps (brainmaze-eeg-models' seizure model, 599 steps) writes ~40,000 tensors and a
115 MB file. The build's own report and `edgepipe compare` read it back; the 64 MiB bound for
manifests and results.json refused the file edgepipe had just written, failing the build at the end."""

from __future__ import annotations

import json

import numpy as np

from edgepipe.calibrate.result import CalibrationResult
from edgepipe.delivery.report import render_report
from edgepipe.safeio import JSON_MAX_BYTES
from tests.test_report import results

TENSORS = 40_000  # 64 bins + 65 edges each, written with indent=1 as CalibrationResult.save does


def unrolled_lstm_calibration() -> dict:
    rng = np.random.default_rng(0)
    edges = np.linspace(0.0, 50.0, 65).tolist()
    counts = rng.integers(0, 800_000, 64).tolist()
    tensors, histograms = {}, {}
    for step in range(TENSORS):
        name = f"/lstm/step_{step}/Sigmoid_output_0"
        tensors[name] = {"name": name, "min": 0.0, "max": 1.0, "amax": 1.0, "lo": 0.0, "hi": 1.0, "method": "mse"}
        histograms[name] = {"edges": edges, "counts": counts, "amax": 1.0, "lo": 0.0, "hi": 1.0}
    return {"schema": 1, "method": "mse", "num_samples": 8, "warnings": [], "tensors": tensors,
            "histograms": histograms}


def test_a_large_calibration_json_is_read_back_by_compare_and_the_report(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(unrolled_lstm_calibration(), indent=1, sort_keys=True) + "\n")
    assert path.stat().st_size > JSON_MAX_BYTES
    assert len(CalibrationResult.load(path).tensors) == TENSORS  # what `edgepipe compare` loads
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "results.json").write_text(json.dumps(results()))
    html = render_report(report_dir / "results.json").read_text()  # the build's last step
    assert "activation value" in html
