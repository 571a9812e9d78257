"""Third hostile-input pass: findings outside the output-path checks (tests/test_output_paths.py)."""

from __future__ import annotations

import pytest

from edgepipe.errors import UserError
from edgepipe.targets import load_target


@pytest.mark.parametrize("text, fragment", [
    ("base: arm-cpu\noptions: {per_channel: false}\n", "options.per_channel is not an option target 'arm-cpu'"),
    ("base: arm-cpu\noptions: {build_engine: true}\n", "options.build_engine"),
    ("base: jetson\noptions: {workspace: 512}\n", "did you mean 'workspace_mb'?"),
])
def test_profile_option_the_target_does_not_read_is_refused(tmp_path, text, fragment):
    (tmp_path / "board.yaml").write_text(text)
    with pytest.raises(UserError, match="board.yaml") as info:
        load_target(str(tmp_path / "board.yaml"))
    assert fragment in str(info.value)


def test_profile_chain_names_the_profile_with_the_unknown_option(tmp_path):
    (tmp_path / "common.yaml").write_text("base: arm-cpu\noptions: {threads: 3, int8_io: true}\n")
    (tmp_path / "board.yaml").write_text("base: common.yaml\noptions: {keep_layuot: true}\n")
    assert load_target(str(tmp_path / "common.yaml")).options["threads"] == 3
    with pytest.raises(UserError, match=r"board.yaml: options.keep_layuot .* did you mean 'keep_layout'"):
        load_target(str(tmp_path / "board.yaml"))


def test_a_plugins_own_default_option_is_accepted(tmp_path, monkeypatch):
    from edgepipe.targets import _load_plugin

    monkeypatch.setattr(_load_plugin("arm-cpu"), "default_options", {"threads": 2, "big_cores_only": False})
    (tmp_path / "board.yaml").write_text("base: arm-cpu\noptions: {big_cores_only: true}\n")
    assert load_target(str(tmp_path / "board.yaml")).options["big_cores_only"] is True


@pytest.mark.parametrize("target", ["arm-cpu", "jetson"])
def test_a_node_onnx_runtime_cannot_run_is_named_not_an_internal_error(tmp_path, capsys, target):
    """Conv group 3 on 4 channels passes ONNX's checker and shape inference; ONNX Runtime fails only
    when it runs the node. That was 'internal error in fold' (exit 3); it is the model's fault."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tests.test_bad_inputs import run_main

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    y.type.tensor_type.shape.SetInParent()
    w = numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], group=0, name="grouped")
    model = helper.make_model(helper.make_graph([conv], "g", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((4, 4, 8, 8)).astype(np.float32))
    code, err = run_main(["build", "--model", "model.onnx", "--target", target, "--calib", "calib.npz",
                          "--out", "out"], tmp_path, capsys)
    lines = [line for line in err.splitlines() if not line.startswith("warning")]
    assert code == 2 and len(lines) == 1, err
    assert "node 'grouped' (Conv) cannot run in ONNX Runtime" in err and "group: 0" in err
    assert not (tmp_path / "out").exists()


def _one_node_model(node, inits=(), out_type=None):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", out_type or TensorProto.FLOAT, None)
    y.type.tensor_type.shape.SetInParent()
    return helper.make_model(helper.make_graph([node], "g", [x], [y], list(inits)),
                             opset_imports=[helper.make_opsetid("", 17)])


def _malformed(kind):
    import numpy as np
    from onnx import helper, numpy_helper

    ints = lambda name, values: numpy_helper.from_array(np.array(values, np.int64), name)  # noqa: E731
    if kind == "cast-to-99":
        return _one_node_model(helper.make_node("Cast", ["x"], ["y"], to=99, name="n")), "cast to type 99"
    if kind == "pad-two-values":
        return (_one_node_model(helper.make_node("Pad", ["x", "p"], ["y"], name="n"), [ints("p", [1, 1])]),
                "2 pads for 4 padded axes")
    if kind == "slice-step-0":
        node = helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"], name="n")
        return (_one_node_model(node, [ints("s", [0]), ints("e", [4]), ints("a", [1]), ints("st", [0])]),
                "a step of 0 is invalid")
    node = helper.make_node("Einsum", ["x"], ["y"], equation="ijkl->" + "l" * 10000, name="n")
    return _one_node_model(node), "would hold about 10^9030 elements [8, 8, 8, 8, 8, 8, 8, 8, ...] (rank 10000)"


@pytest.mark.parametrize("kind", ["cast-to-99", "pad-two-values", "slice-step-0", "rank-10000-output"])
def test_malformed_node_on_arm_cpu_is_one_line(tmp_path, capsys, kind):
    """Each passed ONNX's checker and was an internal error (exit 3) on arm-cpu: protobuf's Name()
    of an unknown type, an index past a short pads list, slice().indices() of step 0, and printing
    an element count of 9030 digits (Python refuses int -> str past 4300 digits)."""
    import numpy as np
    import onnx

    from tests.test_bad_inputs import run_main

    model, fragment = _malformed(kind)
    onnx.save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=np.zeros((2, 4, 8, 8), np.float32))
    code, err = run_main(["build", "--model", "model.onnx", "--target", "arm-cpu", "--calib", "calib.npz",
                          "--out", "out"], tmp_path, capsys)
    lines = [line for line in err.splitlines() if not line.startswith("warning")]
    assert code == 2 and len(lines) == 1 and fragment in err, err


@pytest.mark.parametrize("kind", ["nan-weights", "log-of-negative-data"])
def test_nan_activation_blames_the_model_only_when_its_numbers_do(tmp_path, capsys, kind):
    """NaN Conv weights made calibration say 'check that sample's preprocessing or drop it' (every
    sample fails the same way); now the Conv and its constant are named. A NaN that finite data
    makes (Log of a negative input) still points at the sample."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from tests.test_bad_inputs import run_main

    if kind == "nan-weights":
        weights = numpy_helper.from_array(np.full((4, 4, 3, 3), np.nan, np.float32), "broken_w")
        model = _one_node_model(helper.make_node("Conv", ["x", "broken_w"], ["y"], name="conv"), [weights])
        expected = "node 'conv' (Conv) reads the model's constant 'broken_w', which holds NaN"
    else:
        model = _one_node_model(helper.make_node("Log", ["x"], ["y"], name="log"))
        expected = "check that sample's preprocessing"
    onnx.save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=-np.ones((2, 4, 8, 8), np.float32))
    code, err = run_main(["build", "--model", "model.onnx", "--target", "jetson", "--calib", "calib.npz",
                          "--out", "out"], tmp_path, capsys)
    lines = [line for line in err.splitlines() if not line.startswith("warning")]
    assert code == 2 and len(lines) == 1 and expected in err, err


def test_inventory_old_ansible_spellings_are_read_not_dropped(tmp_path):
    """`ansible_ssh_host` (Ansible's older name, still read by Ansible) was dropped: edgepipe
    connected to the alias 'board' instead of 10.0.0.5, as whatever user and port ssh chose."""
    from edgepipe.delivery.fleet import load_inventory

    (tmp_path / "hosts.ini").write_text("[boards]\nboard ansible_ssh_host=10.0.0.5 ansible_ssh_user=pi "
                                        "ansible_ssh_port=2222 ansible_private_key_file=/keys/pi\n"
                                        "other ansible_host=10.0.0.6 ansible_ssh_host=10.9.9.9\n")
    board, other = load_inventory(tmp_path / "hosts.ini")
    target = board.target()
    assert (target.host, target.user, target.port, target.identity) == ("10.0.0.5", "pi", 2222, "/keys/pi")
    assert other.target().host == "10.0.0.6"  # the current name wins over the old one


@pytest.mark.parametrize("line, fragment", [
    ("board ansible_host=10.0.0.5 ansible_connection=docker", "ansible_connection=docker is not ssh"),
    ("board ansible_host=10.0.0.5 ansible_ssh_extra_args='-o ProxyJump=gw'", "ansible_ssh_extra_args is not used"),
    ("board ansible_host=10.0.0.5 ansible_ssh_pass=secret", "ansible_ssh_pass is not used"),
])
def test_inventory_connection_settings_edgepipe_cannot_honour_are_refused(tmp_path, line, fragment):
    from edgepipe.delivery.fleet import load_inventory

    (tmp_path / "hosts.ini").write_text(f"[boards]\n{line}\n")
    with pytest.raises(UserError, match="host board") as info:
        load_inventory(tmp_path / "hosts.ini")
    assert fragment in str(info.value)


def test_inventory_key_file_that_is_a_fifo_is_refused(tmp_path):
    """--identity refused a FIFO (ssh blocks reading it forever); an inventory's key file did not."""
    import os

    from edgepipe.delivery.fleet import load_inventory

    os.mkfifo(tmp_path / "key")
    (tmp_path / "hosts.ini").write_text(f"board ansible_host=10.0.0.5 ansible_ssh_private_key_file={tmp_path}/key\n")
    with pytest.raises(UserError, match="SSH private key of host board"):
        load_inventory(tmp_path / "hosts.ini")


def test_eval_that_is_the_calibration_data_is_warned(tmp_path, capsys):
    """--eval naming the --calib file (here through another spelling) built silently and reported the
    accuracy on the samples the ranges were fitted to; without --eval a share is held out instead."""
    import numpy as np
    import onnx

    from tests.helpers import tiny_conv_model
    from tests.test_bad_inputs import run_main

    onnx.save(tiny_conv_model(), tmp_path / "model.onnx")
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    base = ["build", "--model", "model.onnx", "--target", "jetson", "--calib", "data/calib.npz", "--no-host-report"]
    code, err = run_main([*base, "--eval", "./data/../data/calib.npz", "--out", "a"], tmp_path, capsys)
    assert code == 0 and "is the --calib data" in err and "flatters int8" in err, err
    np.savez(tmp_path / "eval.npz", x=np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32))
    code, err = run_main([*base, "--eval", "eval.npz", "--out", "b"], tmp_path, capsys)
    assert code == 0 and "is the --calib data" not in err, err


@pytest.mark.parametrize("option", [("--batch-size", "0"), ("--lr", "nan"), ("--temperature", "inf")])
def test_finetune_numbers_are_checked_before_any_work(tmp_path, capsys, option):
    """--batch-size 0 was an internal error (range() step 0) after the export and calibration;
    --lr nan passed `lr <= 0` and trained NaN weights into the saved state_dict."""
    from edgepipe import demo
    from tests.test_bad_inputs import run_main

    code, err = run_main(["finetune", "--model", demo.DEMO_FACTORY, "--train", str(tmp_path), "--out",
                          str(tmp_path / "w.pt"), *option], tmp_path, capsys)
    assert code == 2 and err.startswith("error: finetune: need") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "w.pt").exists()


def test_a_thin_image_is_refused_before_the_resize_allocates_gigabytes(tmp_path):
    """A 300-byte 1x60000 PNG under a 224x224 model: scaling its shorter side to 224 made a
    224x13440000 image (3 GB as RGB) before the crop; the build ended 'out of memory; try fewer
    calibration samples' (or the machine swapped)."""
    import numpy as np
    from PIL import Image

    from edgepipe.data import load_dataset

    (tmp_path / "a").mkdir()
    Image.new("RGB", (1, 60000)).save(tmp_path / "a" / "thin.png")
    with pytest.raises(UserError, match=r"thin.png: 1x60000 pixels; .* makes 224x13440000 before the crop"):
        load_dataset(tmp_path, {"x": ((1, 3, 224, 224), np.float32)}, {}).sample(0)


def test_preprocess_size_past_the_model_input_is_refused_before_decoding(tmp_path):
    import numpy as np

    from edgepipe.data import load_dataset

    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "one.png")
    with pytest.raises(UserError, match=r"size \[100000, 100000\] is not the model input's"):
        load_dataset(tmp_path, {"x": ((1, 3, 8, 8), np.float32)}, {"size": [100000, 100000]})
    with pytest.raises(UserError, match="10000000000 pixels"):  # a dynamic input takes the size, bounded
        load_dataset(tmp_path, {"x": ((1, 3, None, None), np.float32)}, {"size": [100000, 100000]})


@pytest.fixture(scope="module")
def arm_run_py(tmp_path_factory):
    import numpy as np
    import onnx

    from tests.helpers import run_cli, tiny_conv_model

    tmp = tmp_path_factory.mktemp("arm_run_py")
    onnx.save(tiny_conv_model(), tmp / "model.onnx")
    np.savez(tmp / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    result = run_cli("build", "--model", "model.onnx", "--calib", "calib.npz", "--target", "arm-cpu",
                     "--no-host-report", "--out", "bundle", cwd=tmp)
    assert result.returncode == 0, result.stderr
    return tmp / "bundle"


@pytest.mark.parametrize("args, fragment", [
    (["--iterations", "0"], "argument --iterations: 0 is not in 1..any"),
    (["--limit", "-1"], "argument --limit: -1 is not in 1..any"),
    (["--threads", "99999999999999"], "argument --threads: 99999999999999 is not in 1..1024"),
    (["--set", "threads=4"], "error: --set threads: this runner reads no --set options"),
    (["--out", "{bundle}/model.tflite"], "is inside the bundle"),
    (["--out", "{tmp}/calib.npz"], "exists and is not a JSON file; refusing to replace it"),
], ids=["iterations-0", "limit-negative", "threads-huge", "set-unknown", "out-over-model", "out-over-data"])
def test_run_py_options_are_checked_before_the_run(arm_run_py, tmp_path, args, fragment):
    """The bundle's run.py met --iterations 0 (IndexError), --limit -1 (ZeroDivisionError) and
    --threads 10**14 (the runtime's TypeError) with tracebacks, ignored --set keys its runner never
    reads, and wrote results.json over whatever --out named (the bundle's own model.tflite)."""
    import subprocess
    import sys

    from edgepipe.delivery.bundle import verify_bundle

    import numpy as np

    np.savez(tmp_path / "calib.npz", x=np.zeros(3, np.float32))
    args = [a.format(bundle=arm_run_py, tmp=tmp_path) for a in args]
    result = subprocess.run([sys.executable, str(arm_run_py / "run.py"), "--iterations", "2", "--warmup", "0", *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert fragment in result.stderr.strip().splitlines()[-1], result.stderr
    assert verify_bundle(arm_run_py) == [] and np.load(tmp_path / "calib.npz")["x"].shape == (3,)


@pytest.mark.parametrize("args, fragment", [
    (["--output", "model.qdq.onnx"], "--output model.qdq.onnx is a file of the bundle"),
    (["--dla-core", "-1"], "argument --dla-core: -1 is not in 0..255"),
    (["--workspace-mb", "0"], "argument --workspace-mb: 0 is not in 1..10000000"),
], ids=["output-over-model", "dla-negative", "workspace-zero"])
def test_build_engine_options_are_checked(tmp_path, args, fragment):
    """The TensorRT kit's build_engine.py wrote the engine over any --output (model.qdq.onnx: the bundle's
    model) and passed a negative DLA core or a zero workspace on to TensorRT."""
    import subprocess
    import sys

    import numpy as np
    import onnx

    from tests.helpers import run_cli, tiny_conv_model

    onnx.save(tiny_conv_model(), tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    built = run_cli("build", "--model", "model.onnx", "--calib", "calib.npz", "--target", "jetson", "--no-host-report",
                    "--out", "bundle", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    bundle = tmp_path / "bundle"
    model = (bundle / "model.qdq.onnx").read_bytes()
    result = subprocess.run([sys.executable, "build_engine.py", *args], cwd=bundle, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert (bundle / "model.qdq.onnx").read_bytes() == model
