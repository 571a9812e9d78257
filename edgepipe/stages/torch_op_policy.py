"""Which torch code edgepipe agrees to run: a TorchScript file or a torch.export program is a
program, not data.

Why: torch.jit.load runs each module's `__setstate__`, and the export stage runs `forward` (or the
exported graph) to trace it. Both reach ops that act on the host: `aten::save` writes files,
`aten::from_file` maps (and creates) them, `prim::rpc_*` and the `c10d` / `symm_mem` ops talk to
other processes, and every library loaded into the process adds its own namespace under
`torch.ops`. A TorchScript file whose code names any of them is refused before torch.jit.load,
from the archive's code read as text (so nothing runs), and every loaded graph (TorchScript
methods, a `.pt2` program's graph and subgraphs) is checked by op kind before anything is traced.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from edgepipe.errors import UserError

# ops of the allowed namespaces that act outside the tensors: files, other processes
HOST_OPS = {"save": "aten::save", "from_file": "aten::from_file", "rpc_async": "prim::rpc_async",
            "rpc_sync": "prim::rpc_sync", "rpc_remote": "prim::rpc_remote"}
# tensor math (aten, prims, torchvision's nms / roi_align), graph structure (prim) and the quantized
# kernels; any other namespace is a library's own ops (distributed, profiler, test and custom ones)
OP_NAMESPACES = frozenset({"aten", "prim", "prims", "quantized", "_quantized", "torchvision"})
CLASS_NAMESPACES = frozenset({"quantized", "xnnpack"})  # packed weights of quantized / mobile models

_GAP = r"(?:\s|\\|#[^\n]*)*"  # what may stand between a dot and a name in TorchScript source
_HOST_CALL = re.compile(r"\." + _GAP + r"(" + "|".join(HOST_OPS) + r")\b")
# `ops.ns.name` / `torch.ops.ns.name` / `torch.classes.ns.Name`, not an attribute like `self.classes.x`
_NAMESPACE = re.compile(r"(?:\btorch" + _GAP + r"\." + _GAP + r"|(?<![\w.]))(ops|classes)"
                        + _GAP + r"\." + _GAP + r"(\w+)")
_DEF = re.compile(r"\bdef\s+(\w+)")


def _refusal(path: Path, what: str, where: str) -> UserError:
    return UserError(f"{path}: refused: its code calls {what} in {where}, which acts on this machine "
                     "(files, processes) when edgepipe loads or traces it; export the model without it")


def _enclosing_method(source: str, position: int) -> str:
    names = _DEF.findall(source, 0, position)
    return names[-1] if names else "module code"


def check_archive_code(path: Path) -> None:
    """Refuse a TorchScript archive whose code names a host op or a library namespace, before
    torch.jit.load compiles it and runs its `__setstate__` methods."""
    try:
        with zipfile.ZipFile(path) as archive:
            sources = {info.filename: archive.read(info) for info in archive.infolist() if info.filename.endswith(".py")}
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise UserError(f"{path}: not a TorchScript file (torch.jit.save writes a zip archive: {exc}); for a "
                        f"state_dict checkpoint use --model pkg.module:factory --weights {path}") from exc
    for name, data in sorted(sources.items()):
        source = data.decode("utf-8", errors="replace")
        for match in _HOST_CALL.finditer(source):
            raise _refusal(path, HOST_OPS[match.group(1)], f"{_enclosing_method(source, match.start())} ({name})")
        for match in _NAMESPACE.finditer(source):
            kind, namespace = match.groups()
            if namespace not in (OP_NAMESPACES if kind == "ops" else CLASS_NAMESPACES):
                raise _refusal(path, f"{kind}.{namespace}.*", f"{_enclosing_method(source, match.start())} ({name})")


def _node_kinds(block):
    for node in block.nodes():
        yield node.kind()
        for inner in node.blocks():
            yield from _node_kinds(inner)


def check_graphs(module, path: Path) -> None:
    """Refuse a loaded TorchScript module whose methods (calls inlined) run a host op or an op of
    a library namespace; the same rules as check_archive_code, on resolved op kinds."""
    import torch

    for submodule in module.modules():
        for method in submodule._c._method_names():
            graph = submodule._c._get_method(method).graph.copy()
            torch._C._jit_pass_inline(graph)
            for kind in _node_kinds(graph):
                if _refused_kind(kind):
                    raise _refusal(path, kind, method)


def _refused_kind(kind: str) -> bool:
    return kind in HOST_OPS.values() or kind.partition("::")[0] not in OP_NAMESPACES


def check_exported_program(program, path: Path) -> None:
    """Refuse a loaded torch.export program whose graph (or a control-flow subgraph) calls a host op
    or an op of a library namespace, before its module runs. The other call targets torch's
    deserializer admits are higher-order operators (their subgraphs are checked here) and
    operator / math / symbolic-shape functions."""
    import torch
    from torch.utils._pytree import tree_leaves

    for graph_module in program.graph_module.modules():
        graph = getattr(graph_module, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            if isinstance(node.target, torch._ops.HigherOrderOperator) and "torchbind" in node.target.name():
                raise _refusal(path, f"higher_order.{node.target.name()}", f"node '{node.name}'")
            # wrappers (with_effects, auto_functionalized) take the op they run as an argument
            for op in [node.target, *tree_leaves((node.args, node.kwargs))]:
                if isinstance(op, torch._ops.OpOverload) and _refused_kind(op._schema.name):
                    raise _refusal(path, op._schema.name, f"node '{node.name}'")
