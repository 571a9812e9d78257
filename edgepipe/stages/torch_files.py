"""Open TorchScript and torch.export files saved on a GPU machine on a CPU-only build host.

Why: users train and export on CUDA machines and build bundles on laptops or CI runners. A
TorchScript file keeps `device='cuda:0'` constants in its graph (e.g. `torch.arange(n,
device=x.device)` traced on a GPU), and a `.pt2` archive records each weight's device and pickles
its sample inputs as CUDA storages; both fail on a CPU-only torch. `map_location` exists for
TorchScript storages only, and torch's `move_to_device_pass` aborts the process when the source
device is unavailable, so the storages and the graph's device literals are mapped here. The
mapping uses torch's public `register_package` hook plus one archive-reader function of the
pinned torch; the GPU-saved files in tests/gpu_saved check it on every torch upgrade.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
import warnings
from pathlib import Path

from edgepipe.errors import UserError
from edgepipe.safeio import check_zip_members
from edgepipe.stages import torch_op_policy

_mapping = threading.local()
_registered = False


def _to_cpu_storage(storage, location: str):
    """torch.serialization deserializer: a non-CPU storage stays on the CPU while mapping is on."""
    if getattr(_mapping, "active", False) and not location.startswith("cpu"):
        return storage
    return None


@contextlib.contextmanager
def _tensor_pickles_only():
    """torch.load inside torch.export.load as weights_only=True, whatever the caller asks.

    Why: torch.export.load unpickles pickled payloads and, when that fails, the sample inputs with
    weights_only=False, so a crafted .pt2 runs code on the build host. A program whose archive
    really holds Python objects is refused instead; its torch warnings stay out of the terminal."""
    import logging

    import torch

    load = torch.load

    def tensors_only(*args, **kwargs):
        kwargs["weights_only"] = True
        return load(*args, **kwargs)

    export_log = logging.getLogger("torch.export")
    level = export_log.level
    torch.load = tensors_only
    export_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        torch.load = load
        export_log.setLevel(level)


@contextlib.contextmanager
def _storages_on_cpu():
    import torch
    import torch.export.pt2_archive._package as archive

    global _registered
    if not _registered:
        torch.serialization.register_package(1, lambda _obj: None, _to_cpu_storage)
        _registered = True
    read_device = archive.deserialize_device

    def cpu_device(serialized):
        device = read_device(serialized)
        return device if device.type == "cpu" else torch.device("cpu")

    archive.deserialize_device = cpu_device
    _mapping.active = True
    try:
        yield
    finally:
        _mapping.active = False
        archive.deserialize_device = read_device


def _cpu(value):
    import torch

    if isinstance(value, torch.device):
        return value if value.type == "cpu" else torch.device("cpu")
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    return value


def load_exported_program(path: Path):
    """A `.pt2` torch.export program as an eager CPU module."""
    import torch

    check_zip_members(path, "torch.export program")  # torch.export.load inflates every weight whole
    try:
        with _tensor_pickles_only(), _storages_on_cpu():
            program = torch.export.load(str(path))
    except Exception as exc:
        if "weights only load failed" in str(exc).lower() or isinstance(exc, pickle.UnpicklingError):
            raise UserError(f"{path}: refused: the archive holds pickled Python objects, which could run code "
                            "when loaded; export the program with tensor weights and inputs only") from exc
        raise
    torch_op_policy.check_exported_program(program, path)
    changed = False
    for node in program.graph.nodes:
        args, kwargs = _cpu(node.args), _cpu(node.kwargs)
        if args != node.args or kwargs != node.kwargs:
            node.args, node.kwargs, changed = args, kwargs, True
    if changed:
        program.graph_module.recompile()
    module = program.module()
    for parameter in module.parameters():
        parameter.requires_grad_(False)  # traced as constants, see EagerProgram

    class EagerProgram(torch.nn.Module):
        """The program's module behind a plain nn.Module: torch.onnx.export switches modules to
        eval mode, which an exported program's module refuses, so it is not a registered child
        and its weights are traced as constants."""

        def __init__(self):
            super().__init__()
            object.__setattr__(self, "program", module)

        def forward(self, *args):
            with warnings.catch_warnings():  # the program's own shape guards, traced as constants
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                return self.program(*args)

    return EagerProgram()


def load_torchscript(path: Path):
    """A TorchScript file with its storages and its graphs' device constants on the CPU, after its
    code passed the host-op checks (torch_op_policy: loading it runs its `__setstate__`)."""
    import torch

    check_zip_members(path, "TorchScript file")  # torch.jit.load inflates every storage whole
    torch_op_policy.check_archive_code(path)
    module = torch.jit.load(str(path), map_location="cpu")
    torch_op_policy.check_graphs(module, path)
    for submodule in module.modules():
        for name in submodule._c._method_names():
            for node in submodule._c._get_method(name).graph.findAllNodes("prim::Constant"):
                if node.output().type().kind() == "DeviceObjType" and node.s("value") != "cpu":
                    node.s_("value", "cpu")
    return module.eval()


# what torch.save writes for tensors and state_dicts: nothing else is needed to rebuild them
_TENSOR_GLOBALS = ("torch._utils.", "torch._tensor.", "collections.OrderedDict", "torch.Size", "torch.device",
                   "torch.serialization.")


def saved_objects(path: Path) -> list[str] | None:
    """The classes a `torch.save` archive pickles besides tensors (e.g. a whole nn.Module), read
    from the pickle's opcodes without running them; [] for a state_dict of tensors, None when the
    file is no torch.save archive (a TorchScript file has code/, this has only data.pkl)."""
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any("/code/" in name for name in names):
                return None
            pickles = [name for name in names if name.endswith("/data.pkl") or name == "data.pkl"]
            if not pickles:
                return None
            data = archive.read(pickles[0])
        found, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError, RuntimeError, KeyError):
        return None
    objects = [name for name in dict.fromkeys(found)
               if not name.startswith(_TENSOR_GLOBALS) and not (name.startswith("torch.") and name.endswith("Storage"))]
    return objects
