"""Fourth hostile-input pass: findings that need more than a bad-input table row."""

from __future__ import annotations

import pytest

from tests import test_hostile_second_pass

arm_bundle = test_hostile_second_pass.arm_bundle  # the same module-scoped arm-cpu bundle fixture


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


def _local_function_model():
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    body = [helper.make_node("MatMul", ["a", "b"], ["m"]), helper.make_node("Relu", ["m"], ["o"])]
    function = helper.make_function("my.dom", "MatMulRelu", ["a", "b"], ["o"], body, [helper.make_opsetid("", 17)])
    weights = numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), "w")
    graph = helper.make_graph([helper.make_node("MatMulRelu", ["x", "w"], ["y"], domain="my.dom", name="fn")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [weights])
    return helper.make_model(graph, functions=[function],
                             opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.dom", 1)])


def test_model_local_function_is_inlined_and_builds(tmp_path, capsys):
    """A node calling the model's own FunctionProto was refused as 'custom domain my.dom has no
    implementation on arm-cpu' though its body is in the file; the loader inlines it (the same
    outputs as ONNX Runtime on the file as shipped) and the build succeeds."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from edgepipe.onnx_files import load_model
    from tests.test_bad_inputs import run_main

    onnx.save(_local_function_model(), tmp_path / "model.onnx")
    loaded = load_model(tmp_path / "model.onnx")
    assert not loaded.functions and {n.op_type for n in loaded.graph.node} == {"MatMul", "Relu"}
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    shipped = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    inlined = ort.InferenceSession(loaded.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(shipped.run(None, {"x": x})[0], inlined.run(None, {"x": x})[0])
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((8, 1, 4)).astype(np.float32))
    code, err = run_main(["build", "--model", "model.onnx", "--target", "arm-cpu", "--calib", "calib.npz",
                          "--out", "out"], tmp_path, capsys)
    assert code in (0, None), err
    assert (tmp_path / "out" / "manifest.json").is_file()


def _edited_io(bundle, key, value):
    import json

    manifest = json.loads((bundle / "manifest.json").read_text())
    if key in ("io", "target"):
        manifest[key] = value
    else:
        manifest["io"]["inputs"][0][key] = value
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("key, value, fragment", [
    ("io", [], "'io' must be a mapping"),
    ("target", "arm-cpu", "'target' must be a mapping"),
    ("name", 5, "'io.inputs' entry '5': 'name' is not a string"),
    ("dtype", "object", "'dtype' 'object' is not a numeric tensor type"),
], ids=["io-list", "target-string", "input-name-int", "dtype-object"])
def test_compare_on_a_resealed_manifest_of_wrong_types(arm_bundle, tmp_path, capsys, key, value, fragment):
    """`compare` met these as internal errors (KeyError 'inputs', AttributeError, KeyError 5; exit 3)
    and run.py fed an 'object' dtype to the runtime (a traceback): one line each now."""
    import shutil
    import subprocess
    import sys

    from tests.test_bad_inputs import run_main
    from tests.test_hostile_second_pass import _reseal

    bundle = tmp_path / "bundle"
    shutil.copytree(arm_bundle, bundle)
    _edited_io(bundle, key, value)
    _reseal(bundle)
    code, err = run_main(["compare", str(bundle), "--max-samples", "2"], tmp_path, capsys)
    assert code == 2 and fragment in err and "internal error" not in err, err
    ran = subprocess.run([sys.executable, str(bundle / "run.py"), "--iterations", "2", "--warmup", "0", "--out",
                          str(tmp_path / "results.json")], capture_output=True, text=True, timeout=300)
    assert ran.returncode != 0 and "Traceback" not in ran.stderr, ran.stderr
    assert [line for line in ran.stderr.splitlines() if line.startswith("error: manifest.json")], ran.stderr


def test_jetson_builds_a_model_whose_output_is_empty(tmp_path, capsys):
    """ONNX defines an empty output (an AveragePool window larger than its input gives [1, 3, 0, 0];
    the ONNX tests' Shape with start > end gives [0]); jetson built the bundle and then its report
    failed on the argmax of an empty sequence (exit 3). The empty output is reported without figures."""
    import json

    from tests.bad_input_cases import empty_output
    from tests.test_bad_inputs import run_main

    args = empty_output(tmp_path)
    args[args.index("--target") + 1] = "jetson"
    code, err = run_main(args, tmp_path, capsys)
    assert code in (0, None), err
    results = json.loads((tmp_path / "out" / "report" / "results.json").read_text())
    assert results["accuracy"]["outputs"]["y"]["shape"] == [3, 0, 0]
