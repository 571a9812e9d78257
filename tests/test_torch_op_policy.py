"""TorchScript files and .pt2 programs are programs: host ops and library namespaces are refused before they run.

The CLI cases (a `__setstate__` and a `forward` that write a file) are rows of the bad-input
table; these tests cover what the table cannot: the check on loaded graphs alone (the text check
could be bypassed), library namespaces, obfuscated source, and real TorchScript files passing.
"""

import zipfile
from pathlib import Path

import pytest
import torch

from edgepipe.errors import UserError
from edgepipe.stages import torch_files, torch_op_policy

SAVED = Path(__file__).parent / "gpu_saved"


class FileWriter(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        torch.ops.aten.save(x, self.path)
        return x + 1


class ProfilerCall(torch.nn.Module):
    def forward(self, x):
        torch.ops.profiler._record_function_enter_new("x", None)
        return x + 1


class Branchy(torch.nn.Module):
    """Scripted control flow, a helper method and a submodule: what real scripted models hold."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.dim() == 4 else x

    def forward(self, x):
        y = self.conv(x)
        for _ in range(2):
            y = torch.relu(self.scale(y))
        return y.flatten(1).softmax(-1)


def test_loaded_graph_with_a_host_op_is_refused_before_it_runs(tmp_path):
    module = torch.jit.script(FileWriter(str(tmp_path / "written")))
    with pytest.raises(UserError, match=r"aten::save in forward"):
        torch_op_policy.check_graphs(module, tmp_path / "m.pt")
    assert not (tmp_path / "written").exists()


def test_library_namespace_is_refused_in_graph_and_archive(tmp_path):
    module = torch.jit.script(ProfilerCall())
    with pytest.raises(UserError, match=r"profiler::_record_function_enter_new in forward"):
        torch_op_policy.check_graphs(module, tmp_path / "m.pt")
    module.save(str(tmp_path / "m.pt"))
    with pytest.raises(UserError, match=r"ops\.profiler\.\* in forward"):
        torch_op_policy.check_archive_code(tmp_path / "m.pt")


def test_host_op_split_by_a_comment_in_the_source_is_found(tmp_path):
    saved, crafted = tmp_path / "plain.pt", tmp_path / "crafted.pt"
    torch.jit.script(FileWriter(str(tmp_path / "written"))).save(str(saved))
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(crafted, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("code/__torch__.py"):
                assert b"torch.save(" in data
                data = data.replace(b"torch.save(", b"(torch.  # nothing to see\n      save)(")
            out.writestr(info, data)
    torch.jit.load(str(crafted))  # still valid TorchScript
    with pytest.raises(UserError, match=r"aten::save in forward"):
        torch_files.load_torchscript(crafted)
    assert not (tmp_path / "written").exists()


@pytest.mark.parametrize("name", ["small_cnn_traced.pt", "position_cnn_traced.pt"])
def test_traced_files_pass(name):
    module = torch_files.load_torchscript(SAVED / name)
    assert isinstance(module, torch.jit.ScriptModule)


def test_scripted_control_flow_passes_and_runs(tmp_path):
    torch.jit.script(Branchy().eval()).save(str(tmp_path / "branchy.pt"))
    module = torch_files.load_torchscript(tmp_path / "branchy.pt")
    x = torch.randn(1, 3, 5, 5)
    expected = Branchy().eval()
    expected.load_state_dict(module.state_dict())
    torch.testing.assert_close(module(x), expected(x))


def test_a_file_that_is_not_a_zip_is_refused_before_torch_jit_load(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a TorchScript file"):
        torch_files.load_torchscript(tmp_path / "m.pt")


def test_op_passed_to_a_higher_order_wrapper_is_checked(tmp_path):
    """with_effects / auto_functionalized nodes of a .pt2 graph run the op given as their argument."""
    from types import SimpleNamespace

    graph = torch.fx.Graph()
    token = graph.placeholder("token")
    graph.call_function(torch.ops.higher_order.with_effects,
                        (token, torch.ops.aten.from_file.default, str(tmp_path / "mapped"), True, 16))
    graph.output(token)
    program = SimpleNamespace(graph_module=torch.fx.GraphModule(torch.nn.Module(), graph))
    with pytest.raises(UserError, match=r"aten::from_file in node 'with_effects'"):
        torch_op_policy.check_exported_program(program, tmp_path / "m.pt2")
    assert not (tmp_path / "mapped").exists()


class NamedLikeNamespaces(torch.nn.Module):
    """Attributes called `ops` and `classes` are the model's own, not torch's op registry."""

    def __init__(self):
        super().__init__()
        self.ops = torch.nn.Identity()
        self.classes = torch.nn.ReLU()

    def forward(self, x):
        return self.classes.forward(self.ops.forward(x))


def test_attributes_named_like_namespaces_pass(tmp_path):
    torch.jit.script(NamedLikeNamespaces()).save(str(tmp_path / "named.pt"))
    with zipfile.ZipFile(tmp_path / "named.pt") as archive:
        source = "".join(archive.read(n).decode() for n in archive.namelist() if n.endswith(".py"))
    assert "self.classes" in source and "self.ops" in source
    module = torch_files.load_torchscript(tmp_path / "named.pt")
    torch.testing.assert_close(module(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))


class ZeroBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.zeros(256, 1024))  # 1 MB of zeros

    def forward(self, x):
        return x + self.table[0, 0]


def _deflated(source: Path, crafted: Path) -> None:
    """The archive with every member deflated: torch writes them stored, so only a crafted file
    inflates its storages (at scale: a few MB of download that unpacks to more than the memory)."""
    with zipfile.ZipFile(source) as plain, zipfile.ZipFile(crafted, "w", zipfile.ZIP_DEFLATED) as out:
        for info in plain.infolist():
            out.writestr(info.filename, plain.read(info), compress_type=zipfile.ZIP_DEFLATED)


@pytest.mark.parametrize("name", ["zeros.pt", "small_cnn.pt2"])
def test_torch_archive_zip_bomb_is_refused_before_torch_inflates_it(tmp_path, monkeypatch, name):
    from edgepipe import safeio

    if name.endswith(".pt2"):
        source = SAVED / name
        monkeypatch.setattr(safeio, "BOMB_MIN_BYTES", 100)  # the same check, at test scale
        monkeypatch.setattr(safeio, "BOMB_RATIO", 2)
    else:
        source = tmp_path / "plain.pt"
        torch.jit.script(ZeroBuffer()).save(str(source))
        monkeypatch.setattr(safeio, "BOMB_MIN_BYTES", 100_000)
    _deflated(source, tmp_path / name)
    load = torch_files.load_exported_program if name.endswith(".pt2") else torch_files.load_torchscript
    with monkeypatch.context() as patched:
        patched.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran"))
        patched.setattr(torch.export, "load", lambda *a, **k: pytest.fail("torch.export.load ran"))
        with pytest.raises(UserError, match=rf"{name}: .* member '.*' unpacks from \d+ to \d+ bytes"):
            load(tmp_path / name)
    assert load(source) is not None  # torch's own (stored) archive passes the same check
