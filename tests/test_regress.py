"""The regression gate: budgets, JUnit XML, exit codes through the registered click commands."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET

import click
import pytest
from click.testing import CliRunner

from edgepipe.cli.release import register
from edgepipe.errors import BudgetError, UserError
from edgepipe.delivery.regress import parse_increase, run_regression
from edgepipe.settings import RegressSettings

BASE = {
    "schema": 1, "target": "arm-cpu", "where": "device",
    "device": {"cpu": "Cortex-A76", "runtime": "ai-edge-litert 2.3.0", "threads": 4},
    "accuracy": {"top1": 0.90, "top5": 0.99, "argmax_agreement": 0.98, "ece": 0.03,
                 "outputs": {"logits": {"sqnr_db": 30.0, "cosine": 0.999}}},
    "latency_ms": {"p50": 2.0, "p90": 2.2, "p99": 2.5, "mean": 2.05},
}


def variant(**changes) -> dict:
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return data


def cli() -> click.Group:
    @click.group()
    def group():
        """Test group with the release commands."""

    register(group)
    return group


def invoke(tmp_path, baseline, candidate, *extra):
    paths = []
    for name, data in (("base.json", baseline), ("cand.json", candidate)):
        path = tmp_path / name
        if data is not None:
            path.write_text(json.dumps(data))
        paths.append(str(path))
    return CliRunner().invoke(cli(), ["regress", "--baseline", paths[0], "--candidate", paths[1], *extra])


def test_identical_results_pass_every_check():
    result = run_regression(BASE, copy.deepcopy(BASE), RegressSettings())
    names = {c.name for c in result.checks}
    assert result.passed
    assert {"accuracy.top1", "accuracy.top5", "accuracy.argmax_agreement", "accuracy.sqnr_db[logits]",
            "latency.p50", "latency.p90", "latency.p99"} <= names


def test_accuracy_drop_beyond_budget_fails_only_that_check():
    result = run_regression(BASE, variant(accuracy__top1=0.885), RegressSettings(max_drop=0.01))
    assert [c.name for c in result.failures] == ["accuracy.top1"]
    assert run_regression(BASE, variant(accuracy__top1=0.895), RegressSettings(max_drop=0.01)).passed
    assert run_regression(BASE, variant(accuracy__top1=0.885), RegressSettings(max_drop=0.02)).passed


def test_sqnr_and_latency_budgets():
    worse_sqnr = variant(accuracy__outputs={"logits": {"sqnr_db": 27.0, "cosine": 0.99}})
    assert [c.name for c in run_regression(BASE, worse_sqnr, RegressSettings()).failures] == ["accuracy.sqnr_db[logits]"]
    assert run_regression(BASE, worse_sqnr, RegressSettings(max_sqnr_drop_db=5)).passed
    slower = variant(latency_ms__p99=2.5 * 1.15)
    failures = run_regression(BASE, slower, RegressSettings(max_latency_increase="10%")).failures
    assert [c.name for c in failures] == ["latency.p99"]
    assert run_regression(BASE, slower, RegressSettings(max_latency_increase="20%")).passed
    assert run_regression(BASE, slower, RegressSettings(max_latency_increase=0.2)).passed


def test_configured_metrics_and_missing_candidate_metric():
    result = run_regression(BASE, variant(accuracy__top5=0.5), RegressSettings(metrics=["top1"]))
    assert result.passed and not any(c.name == "accuracy.top5" for c in result.checks)
    missing = copy.deepcopy(BASE)
    del missing["accuracy"]["top1"]
    assert "accuracy.top1" in [c.name for c in run_regression(BASE, missing, RegressSettings()).failures]
    with pytest.raises(UserError, match="'top9'"):
        run_regression(BASE, BASE, RegressSettings(metrics=["top9"]))


def test_integer_output_equality_is_gated_with_the_accuracy_budget():
    with_label = variant(accuracy__outputs={"logits": {"sqnr_db": 30.0, "cosine": 0.999}, "label": {"exact_match": 0.98}})
    fewer_equal = variant(accuracy__outputs={"logits": {"sqnr_db": 30.0, "cosine": 0.999}, "label": {"exact_match": 0.95}})
    failures = run_regression(with_label, fewer_equal, RegressSettings(max_drop=0.01)).failures
    assert [c.name for c in failures] == ["accuracy.exact_match[label]"]
    assert run_regression(with_label, fewer_equal, RegressSettings(max_drop=0.05)).passed


def test_ece_is_lower_is_better():
    budgets = RegressSettings(metrics=["ece"], max_drop=0.01)
    assert run_regression(BASE, variant(accuracy__ece=0.01), budgets).passed
    assert not run_regression(BASE, variant(accuracy__ece=0.08), budgets).passed


def test_parse_increase():
    assert parse_increase("10%") == pytest.approx(0.10)
    assert parse_increase(0.25) == pytest.approx(0.25)
    for bad in ("fast", "-5%"):
        with pytest.raises(UserError):
            parse_increase(bad)


def test_cli_pass_writes_junit_and_exits_zero(tmp_path):
    result = invoke(tmp_path, BASE, BASE, "--junit", str(tmp_path / "junit.xml"))
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "latency.p50" in result.output
    root = ET.parse(tmp_path / "junit.xml").getroot()
    suite = root.find("testsuite")
    assert int(suite.get("failures")) == 0 and len(suite.findall("testcase")) == int(suite.get("tests")) > 0


def test_cli_fail_raises_budget_error_with_junit_failures(tmp_path):
    candidate = variant(accuracy__top1=0.5, latency_ms__p50=9.0)
    result = invoke(tmp_path, BASE, candidate, "--junit", str(tmp_path / "out" / "junit.xml"), "--max-drop", "0.05")
    assert isinstance(result.exception, BudgetError) and result.exception.exit_code == 1
    assert "FAIL" in result.output
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    failed = {case.get("name") for case in root.iter("testcase") if case.find("failure") is not None}
    assert failed == {"accuracy.top1", "latency.p50"}
    assert int(root.find("testsuite").get("failures")) == 2


def test_cli_budgets_from_config_and_flags_override(tmp_path):
    config = tmp_path / "edgepipe.yaml"
    config.write_text("regress:\n  max_drop: 0.5\n  max_latency_increase: '500%'\n")
    candidate = variant(accuracy__top1=0.6, latency_ms__p50=9.0)
    assert invoke(tmp_path, BASE, candidate, "--config", str(config)).exit_code == 0
    overridden = invoke(tmp_path, BASE, candidate, "--config", str(config), "--max-drop", "0.01")
    assert isinstance(overridden.exception, BudgetError)


def test_cli_missing_or_invalid_baseline_is_a_user_error(tmp_path):
    result = invoke(tmp_path, None, BASE)
    assert isinstance(result.exception, UserError) and result.exception.exit_code == 2
    assert "base.json" in str(result.exception)
    (tmp_path / "junk.json").write_text("[1, 2")
    result = CliRunner().invoke(cli(), ["regress", "--baseline", str(tmp_path / "junk.json"),
                                        "--candidate", str(tmp_path / "cand.json")])
    assert isinstance(result.exception, UserError) and "junk.json" in str(result.exception)


def test_junit_escapes_metric_names():
    odd = variant(accuracy__outputs={'<out&"put>': {"sqnr_db": 1.0}})
    base = variant(accuracy__outputs={'<out&"put>': {"sqnr_db": 40.0}})
    xml = run_regression(base, odd, RegressSettings()).to_junit()
    names = [case.get("name") for case in ET.fromstring(xml).iter("testcase")]
    assert 'accuracy.sqnr_db[<out&"put>]' in names
