"""A third-party target plugin (tests/plugins/edgepipe_onnxrt_target) builds a bundle with its own runner.

The plugin is a separate distribution, pip-installed into a temporary folder (never into the
test venv, so other tests keep seeing the built-in targets only) and found through the
`edgepipe.targets` entry point. Nothing inside edgepipe names it: the recipe "a new target" of
docs/ARCHITECTURE.md, proven end to end.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

PLUGIN_SOURCE = Path(__file__).parent / "plugins" / "edgepipe_onnxrt_target"
PLUGIN_TARGET = "onnxrt-cpu"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """Folder holding the installed plugin (package + dist-info with its entry point)."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    shutil.copytree(PLUGIN_SOURCE, source)  # pip builds in place: keep tests/ clean
    site = work / "site"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
               "--target", str(site), str(source)]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return site


@pytest.fixture
def plugin_importable(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    importlib.invalidate_caches()


def test_installed_plugin_is_a_target_that_searches_its_own_templates(plugin_importable):
    from edgepipe.targets import available_targets, load_target
    from edgepipe.templating import render

    assert PLUGIN_TARGET in available_targets()
    target = load_target(PLUGIN_TARGET)
    assert target.template_packages() == ("edgepipe_onnxrt_target",)
    assert load_target("arm-cpu").template_packages() == ()  # built-ins use edgepipe's templates
    runner = render(target.runner_template, target.template_packages())
    assert "class Runner" in runner and "onnxruntime" in runner
    # edgepipe's own templates stay reachable through the same search path
    assert "class Runner" in render("runner_tflite.py.j2", target.template_packages())


@pytest.mark.slow
def test_cli_builds_and_runs_a_bundle_with_the_plugin_runner(plugin_site, tmp_path):
    config = tmp_path / "edgepipe.yaml"
    config.write_text(yaml.safe_dump({"report": {"iterations": 10, "warmup": 2},
                                      "cache_dir": str(tmp_path / "cache")}))
    out = tmp_path / "bundle"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run([sys.executable, "-m", "edgepipe", "build", "--target", PLUGIN_TARGET,
                                "--config", str(config), "--out", str(out)],
                               cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]

    run_py = (out / "run.py").read_text()
    assert "shipped by the edgepipe-onnxrt-target plugin" in run_py  # the plugin's runner was included
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["name"] == PLUGIN_TARGET and manifest["model"] == "model.qdq.onnx"
    assert "onnxruntime>=1.16" in (out / "requirements.txt").read_text()

    results = json.loads((out / "report" / "results.json").read_text())  # written by the bundle's run.py
    assert results["target"] == PLUGIN_TARGET and results["device"]["runtime"].startswith("onnxruntime ")
    # independent check: the bundle's model and eval data run directly in ONNX Runtime
    with np.load(out / "eval" / "eval.npz") as data:
        arrays = {k: data[k] for k in data.files}
    session = ort.InferenceSession(str(out / "model.qdq.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: arrays[f"input:{name}"][i:i + 1]})[0]
                             for i in range(len(arrays["labels"]))])
    top1 = float(np.mean(logits.argmax(axis=1) == arrays["labels"]))
    assert results["accuracy"]["top1"] == pytest.approx(top1)
    assert any(n.op_type == "QuantizeLinear" for n in __import__("onnx").load(str(out / "model.qdq.onnx")).graph.node)
    assert results["accuracy"]["top1"] >= results["accuracy"]["fp32_top1"] - 0.05  # int8 close to FP32
