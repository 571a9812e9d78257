"""The host report's timing budget: run.py stops timing after --max-seconds (whole blocks of 10
inferences per model) and records the iterations it did; the build passes report.max_timing_s.
Why: a large model's 200 iterations of int8 next to fp32 kept a build timing for half an hour."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import test_hostile_third_pass

arm_run_py = test_hostile_third_pass.arm_run_py  # a tiny arm-cpu bundle (module-scoped fixture)


def test_run_py_stops_timing_at_its_budget_and_records_the_iterations_done(arm_run_py, tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run([sys.executable, str(arm_run_py / "run.py"), "--iterations", "100000000", "--warmup", "3",
                             "--max-seconds", "0.5", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    latency = json.loads(out.read_text())["latency_ms"]
    assert 10 <= latency["iterations"] < 100000000 and latency["iterations"] % 10 == 0
    assert len(latency["samples"]) == latency["iterations"]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_run_py_refuses_a_budget_that_is_not_seconds(arm_run_py, value):
    result = subprocess.run([sys.executable, str(arm_run_py / "run.py"), "--max-seconds", value],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --max-seconds" in result.stderr.strip().splitlines()[-1], result.stderr


def test_the_build_passes_report_max_timing_s_to_run_py(monkeypatch, tmp_path):
    from edgepipe import config
    from edgepipe.delivery import host_report
    from edgepipe.errors import UserError
    from edgepipe.settings import ReportSettings

    seen = []

    def fake_run(command, **kwargs):
        seen.append(command)
        return subprocess.CompletedProcess(command, 1, "", "stop here")

    monkeypatch.setattr(host_report.subprocess, "run", fake_run)
    settings = {"backend": {"threads": 1}, "report": ReportSettings(max_timing_s=7.5)}
    with pytest.raises(UserError):
        host_report.run_host_report(tmp_path, settings, type("T", (), {"options": {}})(), None)
    command = seen[0]
    assert command[command.index("--max-seconds") + 1] == "7.5"
    assert config.SCHEMA["report"]["max_timing_s"].default == ReportSettings().max_timing_s
