"""The host report's speed warning: one line when the int8 model ran slower than the FP32 model
timed next to it (arm-cpu's run.py times both), carried into results.json, the build's warnings
and report.html / report.md."""

from __future__ import annotations

import json

import pytest

from edgepipe.delivery.host_report import SLOWER_MARGIN, speed_warning
from edgepipe.delivery.report import render_report
from tests.test_report import EVIL, results


def timed(int8_p50: float, fp32_p50: float, compare_model: str = "model.fp32.tflite") -> dict:
    data = results(p50=int8_p50)
    data["latency_ms"]["p50"] = int8_p50
    data["compare"] = {"model": compare_model, "latency_ms": {"p50": fp32_p50}, "delegation": None}
    data["speedup"] = fp32_p50 / int8_p50
    return data


def test_slower_int8_gets_one_line_recommending_the_fp32_model():
    line = speed_warning(timed(int8_p50=2.1, fp32_p50=1.0))
    assert line is not None and "\n" not in line
    assert "2.10x slower than model.fp32.tflite" in line and "p50 2.100 vs 1.000 ms" in line
    assert "run.py --model model.fp32.tflite" in line and "precision.float_nodes" in line


def test_on_an_arm_host_the_line_recommends_the_fp32_model_plainly():
    data = timed(int8_p50=2.1, fp32_p50=1.0)
    data["device"]["machine"] = "aarch64"
    line = speed_warning(data)
    assert "on this host (p50" in line and "int8 does not pay for this model here; deploy model.fp32.tflite" in line
    assert "does not predict" not in line


@pytest.mark.parametrize("flags, amx", [({"avx2", "avx512_vnni"}, False), ({"avx512_vnni", "amx_int8"}, True)])
def test_on_an_x86_host_the_line_says_the_timing_does_not_predict_the_board(monkeypatch, flags, amx):
    """XNNPACK picks other int8 kernels on x86 (AMX tiles, a slower int8 depthwise kernel) than on an
    ARM board: the host's verdict is not the board's."""
    from edgepipe.delivery import host_report

    monkeypatch.setattr(host_report, "cpu_flags", lambda: flags)
    line = speed_warning(timed(int8_p50=2.1, fp32_p50=1.0))
    assert "on this x86_64 host (p50 2.100 vs 1.000 ms)" in line and "does not predict the board" in line
    assert "only if int8 is slower there too deploy model.fp32.tflite" in line and "\n" not in line
    assert ("AMX-INT8" in line) == amx


@pytest.mark.parametrize("int8_p50, fp32_p50", [(1.0, 2.0), (1.0, 1.0), (1.0, 1.0 / SLOWER_MARGIN + 0.01)])
def test_faster_or_within_noise_says_nothing(int8_p50, fp32_p50):
    assert speed_warning(timed(int8_p50, fp32_p50)) is None


def test_nothing_compared_says_nothing():
    data = results()
    assert speed_warning(data) is None
    data.update(compare=None, speedup=0.2)
    assert speed_warning(data) is None


def test_report_shows_the_speed_warning_escaped(tmp_path):
    data = timed(2.0, 1.0, compare_model=EVIL)
    data["speed_warnings"] = [speed_warning(data)]
    (tmp_path / "report").mkdir()
    path = tmp_path / "report" / "results.json"
    path.write_text(json.dumps(data))
    html = render_report(path).read_text()
    assert "2.00x slower than &lt;script&gt;" in html and EVIL not in html
    assert "2.00x slower than" in (tmp_path / "report" / "report.md").read_text()
