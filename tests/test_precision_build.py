"""`edgepipe build --target arm-cpu` with `precision.budget` on a model where plain int8 breaks
the budget: the planner confirms int16 / float islands on the real LiteRT kernels, and the
bundle's own host report (run.py, independent of the planner) shows the budget met, with the
default levels (int8 -> float) and with `levels: [int8, int16, float]`."""

import json

import pytest
import torch

from edgepipe.demo import DEMO_PREPROCESS, demo_calib_dir, demo_eval_dir
from edgepipe.demo.model import build_demo, make_outlier_heavy
from tests.helpers import run_cli

OUTLIER = 100.0


def outlier_heavy_weights(path):
    torch.save(make_outlier_heavy(build_demo(), OUTLIER).state_dict(), path)


def config(tmp_path, budget, levels=None):
    lines = [
        "model: edgepipe.demo.model:build_demo",
        f"weights: {tmp_path / 'outlier.pt'}",
        "target: arm-cpu",
        f"calib: {demo_calib_dir()}",
        f"eval: {demo_eval_dir()}",
        "input_shapes: {image: [1, 3, 32, 32]}",
        "output_names: [logits]",
        f"preprocess: {json.dumps(DEMO_PREPROCESS)}",
        "fold: {input_normalization: mean_std}",
        "report: {iterations: 100, warmup: 5}",
        # the planted outlier is one the wide-range rule keeps float by itself: off, so the budget has work
        "backend: {wide_range_float: false}",
    ]
    if budget is not None:
        lines.append(f"precision: {{budget: {budget}{f', levels: {levels}' if levels else ''}}}")
    path = tmp_path / f"edgepipe-{budget}-{'-'.join(levels or [])}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("amp")
    outlier_heavy_weights(tmp / "outlier.pt")
    results = {}
    for name, budget, levels in (("plain", None, None), ("budget", 0.01, None),
                                 ("int16", 0.01, ["int8", "int16", "float"])):
        out = tmp / name
        result = run_cli("build", "--config", str(config(tmp, budget, levels)), "--out", str(out), "--json",
                         cwd=tmp)
        assert result.returncode == 0, result.stderr
        results[name] = (json.loads(result.stdout), out)
    return results


def test_plain_int8_breaks_the_budget(builds):
    accuracy = builds["plain"][0]["results"]["accuracy"]
    assert accuracy["fp32_top1"] - accuracy["top1"] > 0.01


def test_budget_is_met_with_int16_before_float(builds):
    """levels [int8, int16, float]: 16x8 rather than float (fully integer); run.py on the bundle
    agrees with the planner's LiteRT confirmation."""
    summary, out = builds["int16"]
    accuracy = summary["results"]["accuracy"]
    assert accuracy["fp32_top1"] - accuracy["top1"] <= 0.01 + 1e-9
    plan = json.loads((out / "precision.json").read_text())
    assert plan["met"] and plan["levels"] == ["int8", "int16", "float"]
    assert not plan["float_groups"] and plan["int16_groups"] and plan["int16_nodes"]
    precision = summary["results"]["precision"]
    assert precision["int16_ops"] >= 1 and precision["float_ops"] <= 1  # at most the float-output head
    assert precision["int8_ops"] + precision["int16_ops"] + precision["float_ops"] == precision["ops"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"]["requested_int16_nodes"] == plan["int16_nodes"]
    # lowered 16x8 (fused activations drop out), none without an int16 kernel
    lowered = set(manifest["precision"]["int16_nodes"])
    assert lowered and lowered <= set(plan["int16_nodes"])
    assert not manifest["precision"]["int16_fallback"]


def test_budget_is_met_on_the_device_runner_with_few_float_nodes(builds):
    summary, out = builds["budget"]
    accuracy = summary["results"]["accuracy"]
    assert accuracy["fp32_top1"] - accuracy["top1"] <= 0.01 + 1e-9
    plan = json.loads((out / "precision.json").read_text())
    assert plan["met"] and 1 <= len(plan["float_groups"]) <= 3 and not plan["int16_nodes"]
    # results.json says what the budget bought and what the search cost
    precision = summary["results"]["precision"]
    assert precision["met"] and precision["float_nodes"] == plan["float_nodes"]
    assert 0.5 < precision["int8_fraction"] < 1.0 and precision["int8_ops"] < precision["ops"]
    assert precision["search_seconds"] > 0 and precision["evaluations"]["search"] >= 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"]["requested_float_nodes"] == sorted(plan["float_nodes"])
    # fused activations drop out; the head writing the float model output is float anyway (ops/linear.py)
    assert set(manifest["precision"]["float_nodes"]) <= set(plan["float_nodes"]) | {"/classifier/Gemm"}
    # the report explains which layers and why
    assert (out / "sensitivity.json").exists()
    html = (out / "report" / "report.html").read_text()
    assert plan["float_groups"][0] in html
