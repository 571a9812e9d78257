"""report.html / report.md: escaping, charts, baseline deltas, and a real headless-browser render."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepipe.errors import UserError
from edgepipe.delivery.report import render_report
from tests.ci import missing_tool

EVIL = "<script>alert(1)</script>"


def results(top1=0.9, p50=2.0, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    latencies = (p50 + 0.1 * rng.standard_normal(120)).clip(0.5).round(4).tolist()
    bins = [{"lo": i / 15, "hi": (i + 1) / 15, "count": 4 if i > 8 else 0,
             "confidence": (i + 0.5) / 15 if i > 8 else None, "accuracy": 0.8 if i > 8 else None} for i in range(15)]
    return {
        "schema": 1, "target": "arm-cpu", "where": "host", "model": "model.tflite", "verified": True,
        "device": {"cpu": "Test CPU", "gpu": None, "runtime": "ai-edge-litert 2.3.0", "threads": 2, "machine": "x86_64"},
        "accuracy": {"top1": top1, "top5": 1.0, "fp32_top1": 0.92, "fp32_top5": 1.0, "argmax_agreement": 0.97,
                     "ece": 0.04, "ece_bins": bins, "outputs": {EVIL: {"sqnr_db": 31.5, "cosine": 0.999,
                                                                       "argmax_agreement": 0.97}}},
        "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50, "std": 0.1,
                       "iterations": 120, "warmup": 10, "samples": latencies},
        "size_bytes": 12345, "peak_rss_mb": 80.0, "samples": 24,
    }


def write_case(folder: Path, baseline: bool = True) -> Path:
    report_dir = folder / "report"
    report_dir.mkdir(parents=True)
    (report_dir / "results.json").write_text(json.dumps(results()))
    if baseline:
        (folder / "base.json").write_text(json.dumps(results(top1=0.95, p50=1.5, seed=1)))
    edges = np.linspace(-2, 3, 17).tolist()
    calibration = {"schema": 1, "method": "entropy", "warnings": [f"tensor {EVIL} is unstable"],
                   "tensors": {EVIL: {"name": EVIL, "min": -2, "max": 3, "amax": 2.5, "lo": -2, "hi": 2.5,
                                      "method": "entropy"}},
                   "histograms": {EVIL: {"edges": edges, "counts": list(range(16)), "amax": 2.5, "lo": -2.0, "hi": 2.5}}}
    (folder / "calibration.json").write_text(json.dumps(calibration))  # bundle root, results in report/
    sensitivity = {"schema": 1, "metric": "top1", "nodes": [
        {"rank": 1, "name": EVIL, "op_type": "Conv", "sqnr_only_db": 12.0, "metric_drop": 0.05, "recovery_db": 3.0},
        {"rank": 2, "name": "fc", "op_type": "Gemm", "sqnr_only_db": 25.0, "metric_drop": 0.01, "recovery_db": 1.0}]}
    (folder / "sensitivity.json").write_text(json.dumps(sensitivity))
    return report_dir / "results.json"


def test_html_escapes_names_and_embeds_every_chart(tmp_path):
    results_path = write_case(tmp_path)
    html_path = render_report(results_path, baseline=tmp_path / "base.json")
    html = html_path.read_text()
    assert EVIL not in html and "&lt;script&gt;" in html
    assert "<script" not in html.lower()
    for label in ("Latency per inference", "Accuracy vs FP32", "Reliability diagram", "Per-layer sensitivity",
                  "activation value"):
        assert label in html, label
    assert html.count("<svg") >= 5
    assert "-0.05" in html  # top-1 delta vs the baseline (0.90 - 0.95)
    assert "worse" in html  # slower p50 and lower top-1 are flagged
    md = (html_path.parent / "report.md").read_text()
    assert "| top-1 | 0.9 | 0.95 | -0.05 |" in md and "Test CPU" in md


def test_report_without_optional_artifacts_or_baseline(tmp_path):
    report_dir = tmp_path / "r"
    report_dir.mkdir()
    data = results()
    data["accuracy"] = None
    (report_dir / "results.json").write_text(json.dumps(data))
    html = render_report(report_dir / "results.json", out_dir=tmp_path / "out").read_text()
    assert "Latency per inference" in html and "Reliability" not in html and "sensitivity" not in html


def test_bad_results_file_is_a_user_error(tmp_path):
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(UserError, match="r.json"):
        render_report(tmp_path / "r.json")


def test_cli_report_command(tmp_path):
    import click

    from edgepipe.cli.release import register

    @click.group()
    def group():
        """Test group."""

    register(group)
    results_path = write_case(tmp_path)
    result = CliRunner().invoke(group, ["report", str(results_path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "report.html").is_file() and (tmp_path / "o" / "report.md").is_file()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    if _chromium() is None:
        missing_tool("chromium is not installed (apt-get install -y chromium)")

    html_path = render_report(write_case(tmp_path), baseline=tmp_path / "base.json")
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,2000", html_path.as_uri()],
                   capture_output=True, timeout=60, check=False)
    assert shot.is_file() and shot.stat().st_size > 0
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1200) and pixels.std() > 5.0  # not a blank page
    dom = subprocess.run(base + ["--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=60).stdout
    assert dom.count("<svg") >= 5 and "&lt;script&gt;" in dom


def test_reliability_diagram_draws_a_bounded_number_of_bins(tmp_path):
    """A results.json (from a device) may list 400000 calibration bins; the page stays small."""
    from edgepipe.delivery.report import MAX_RELIABILITY_BINS

    data = results()
    data["accuracy"]["ece_bins"] = [{"lo": i / 5000, "hi": (i + 1) / 5000, "count": 1, "confidence": 0.5,
                                     "accuracy": 0.5} for i in range(5000)]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    html = render_report(path, out_dir=tmp_path / "out").read_text()
    reliability = html[html.index("Reliability diagram"):]
    assert MAX_RELIABILITY_BINS <= reliability.count("<rect") <= 3 * MAX_RELIABILITY_BINS
    assert len(html) < 500_000
