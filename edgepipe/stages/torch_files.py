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


def _pickled_globals(data: bytes) -> list[str]:
    """Every `module.name` the pickle imports, without running it. Protocol 4+ (`STACK_GLOBAL`)
    takes module and name from the two values pushed last, often fetched from the memo (a module
    named before is not written again): pushes and memo are followed, so a state_dict saved with
    pickle_protocol=4 reads as tensors only. An operand that is no string is named '?'."""
    import pickletools

    found, pushed, memo = [], [], {}
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("GLOBAL", "INST"):  # INST: protocol 0's class-and-instance in one
            found.append(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL":
            module, attribute = (pushed[-2:] if len(pushed) >= 2 else [None, None])
            found.append(f"{module}.{attribute}" if isinstance(module, str) and isinstance(attribute, str) else "?")
        if name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif name not in ("FRAME", "PROTO"):  # what this opcode leaves on top: a string it pushes, else another value
            pushed.append(arg if isinstance(arg, str) and ("UNICODE" in name or "STRING" in name) else None)
    return found


def saved_objects(path: Path) -> list[str] | None:
    """The classes a `torch.save` archive pickles besides tensors (e.g. a whole nn.Module), read
    from the pickle's opcodes without running them; [] for a state_dict of tensors, None when the
    file is no torch.save archive (a TorchScript file has code/, this has only data.pkl)."""
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
        found = _pickled_globals(data)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError, RuntimeError, KeyError):
        return None
    objects = [name for name in dict.fromkeys(found)
               if not name.startswith(_TENSOR_GLOBALS) and not (name.startswith("torch.") and name.endswith("Storage"))]
    return objects
