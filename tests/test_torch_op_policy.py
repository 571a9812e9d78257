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
from tests.fixture_models import FileWriter

SAVED = Path(__file__).parent / "gpu_saved"


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


class SaveNamedParts(torch.nn.Module):
    """A model's own names that mention `save`: a submodule `self.save`, a method `save`, an
    attribute `save_path`, a helper `save_features` and an error message; none is aten::save."""

    def __init__(self):
        super().__init__()
        self.save = torch.nn.ReLU()
        self.save_path = "features.pt"

    def save_features(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    def forward(self, x):
        if x.numel() > 1_000_000:
            raise RuntimeError("call model.save(path) first")
        return self.save(self.save_features(x))


def test_a_models_own_names_that_mention_save_pass_and_run(tmp_path):
    torch.jit.script(SaveNamedParts()).save(str(tmp_path / "named.pt"))
    with zipfile.ZipFile(tmp_path / "named.pt") as archive:
        source = "".join(archive.read(n).decode() for n in archive.namelist() if n.endswith(".py"))
    assert "self.save\n" in source and "model.save(path)" in source and "save_path" in source
    module = torch_files.load_torchscript(tmp_path / "named.pt")
    torch.testing.assert_close(module(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 4.0]))


# spellings torch.jit.load resolves to aten::save (or a library namespace) that torch.jit.save never writes
CRAFTED_CALLS = {
    "getattr": 'getattr(torch, "save")(x, PATH)',
    "nested-getattr": 'getattr(getattr(torch, "autograd"), "save")(x, PATH)',
    "getattr-on-ops": 'getattr(ops.aten, "save")(x, PATH)',
    "alias": "t = torch\n    t.save(x, PATH)",
    "ops-alias": "o = ops.aten\n    o.save(x, PATH)",
    "parenthesized": "(torch).save(x, PATH)",
    "rebound-self": "self = torch\n    self.save(x, PATH)",
    "autograd": "torch.autograd.save(x, PATH)",
    "function-value": "f = torch.save\n    f(x, PATH)",
}


@pytest.mark.parametrize("form", sorted(CRAFTED_CALLS))
def test_crafted_spellings_of_a_host_op_are_refused_before_torch_jit_load(tmp_path, form):
    written = tmp_path / "written"
    plain, crafted = tmp_path / "plain.pt", tmp_path / "crafted.pt"
    torch.jit.script(FileWriter(str(written))).save(str(plain))
    call = CRAFTED_CALLS[form].replace("PATH", f'"{written}"')
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(crafted, "w") as out:
        for info in source.infolist():
            data = source.read(info).decode() if info.filename.endswith(".py") else source.read(info)
            if info.filename.endswith("code/__torch__.py"):
                line = next(line for line in data.splitlines() if "torch.save(" in line)
                data = data.replace(line, "    " + call)
            out.writestr(info, data)
    with pytest.raises(UserError, match=r"crafted\.pt: refused: its code (calls aten::save|uses .* as a value) in forward"):
        torch_files.load_torchscript(crafted)
    assert not written.exists()
    torch.jit.load(str(crafted))(torch.ones(2))  # the spelling is real: torch runs it and writes the file
    assert written.exists()


def test_code_torch_could_read_differently_is_refused(tmp_path):
    """Bytes that are not UTF-8 or text Python's tokenizer cannot split are not what torch.jit.save
    writes; refusing them keeps the checker's view of strings and names the same as torch's."""
    plain = tmp_path / "plain.pt"
    torch.jit.script(Branchy()).save(str(plain))
    for suffix, text in (("bytes", b"\xff\xfe"), ("quote", b"x = 'unclosed\n")):
        crafted = tmp_path / f"{suffix}.pt"
        with zipfile.ZipFile(plain) as source, zipfile.ZipFile(crafted, "w") as out:
            for info in source.infolist():
                data = source.read(info)
                out.writestr(info, data + text if info.filename.endswith(".py") else data)
        with pytest.raises(UserError, match=rf"{suffix}\.pt: refused: its code .* is not TorchScript source"):
            torch_op_policy.check_archive_code(crafted)


def _rewritten(plain: Path, crafted: Path, rename=None, duplicate_with=None) -> None:
    """`plain` with its code members renamed, or each written twice (the second copy `duplicate_with`)."""
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(crafted, "w") as out:
        for info in source.infolist():
            data, name = source.read(info), info.filename
            if name.endswith(".py") and b"torch.save(" in data:
                if duplicate_with is not None:
                    out.writestr(name, data)
                    data = duplicate_with(data)
                elif rename is not None:
                    name = rename(name)
            out.writestr(name, data)


@pytest.mark.parametrize("rename", [lambda n: n[:-3] + ".PY", lambda n: n.replace("/code/", "/CODE/")],
                         ids=["upper-case-suffix", "upper-case-folder"])
def test_code_members_torch_finds_without_case_are_checked(tmp_path, rename):
    """torch's zip reader looks members up without case: `code/x.PY` is loaded as code."""
    written = tmp_path / "written"
    torch.jit.script(FileWriter(str(written))).save(str(tmp_path / "plain.pt"))
    _rewritten(tmp_path / "plain.pt", tmp_path / "crafted.pt", rename=rename)
    with pytest.raises(UserError, match=r"crafted\.pt: refused: its code calls aten::save in forward"):
        torch_files.load_torchscript(tmp_path / "crafted.pt")
    torch.jit.load(str(tmp_path / "crafted.pt"))(torch.ones(2))  # the renamed member is what torch runs
    assert written.exists()


def test_an_archive_holding_a_member_twice_is_refused(tmp_path):
    """The writer first and a harmless copy second: this check must not read one while torch reads the other."""
    written = tmp_path / "written"
    torch.jit.script(FileWriter(str(written))).save(str(tmp_path / "plain.pt"))
    with pytest.warns(UserWarning, match="Duplicate name"):  # Python's zipfile writes it, and says so
        _rewritten(tmp_path / "plain.pt", tmp_path / "twice.pt",
                   duplicate_with=lambda data: data.replace(b"torch.save(", b"torch.add("))
    with pytest.raises(UserError, match=r"twice\.pt: refused: the archive holds '.*fixture_models\.py' twice"):
        torch_op_policy.check_archive_code(tmp_path / "twice.pt")
    assert not written.exists()


def test_a_custom_class_of_another_library_named_only_in_the_data_is_refused(tmp_path):
    """torch.jit.load rebuilds the custom classes data.pkl names and runs their C++ __setstate__,
    whether or not the code mentions them; quantized packed weights stay allowed."""
    plain, crafted = tmp_path / "qlinear.pt", tmp_path / "crafted.pt"
    torch.jit.script(torch.ao.nn.quantized.Linear(4, 4)).save(str(plain))
    torch_op_policy.check_archive_code(plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(crafted, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                assert b"c__torch__.torch.classes.quantized\nLinearPackedParamsBase\n" in data
                data = data.replace(b"torch.classes.quantized\n", b"torch.classes.dist_rpc\n")
            out.writestr(info, data)
    with pytest.raises(UserError, match=r"crafted\.pt: refused: its code calls classes\.dist_rpc\.\* in its data"):
        torch_op_policy.check_archive_code(crafted)
