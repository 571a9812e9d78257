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
