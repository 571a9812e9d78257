"""Which torch code edgepipe agrees to run: a TorchScript file or a torch.export program is a
program, not data.

Why: torch.jit.load runs each module's `__setstate__`, and the export stage runs `forward` (or the
exported graph) to trace it. Both reach ops that act on the host: `aten::save` writes files,
`aten::from_file` maps (and creates) them, `prim::rpc_*` and the `c10d` / `symm_mem` ops talk to
other processes, and every library loaded into the process adds its own namespace under
`torch.ops`. A TorchScript file whose code names any of them is refused before torch.jit.load,
from the archive's code read token by token (so nothing runs), and every loaded graph (TorchScript
methods, a `.pt2` program's graph and subgraphs) is checked by op kind before anything is traced.
"""

from __future__ import annotations

import io
import re
import tokenize
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

_ROOTS = frozenset({"torch", "ops"})  # the names through which serialized TorchScript code reaches ops
_RPC = frozenset(name for name in HOST_OPS if name.startswith("rpc_"))  # also callable by bare name
_PICKLED_CLASS = re.compile(rb"torch\.classes\.(\w+)")
_SKIPPED = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER})


def _refusal(path: Path, what: str, where: str) -> UserError:
    return UserError(f"{path}: refused: its code calls {what} in {where}, which acts on this machine "
                     "(files, processes) when edgepipe loads or traces it; export the model without it")


def _tokens(path: Path, name: str, data: bytes) -> list[tokenize.TokenInfo]:
    """The code's tokens without comments and line joins. Strict UTF-8 and no encoding cookie:
    torch's lexer reads the bytes, so both must see the same strings and names."""
    try:
        tokens = [token for token in tokenize.generate_tokens(io.StringIO(data.decode("utf-8")).readline)
                  if token.type not in _SKIPPED]
    except (UnicodeDecodeError, tokenize.TokenError, SyntaxError) as exc:
        raise UserError(f"{path}: refused: its code ({name}) is not TorchScript source as torch.jit.save "
                        f"writes it ({type(exc).__name__}); re-save the model with torch.jit.save") from exc
    for token in tokens:
        if token.type == tokenize.ERRORTOKEN and not token.string.isspace():
            raise UserError(f"{path}: refused: its code ({name}) is not TorchScript source as torch.jit.save "
                            f"writes it (line {token.start[0]}: {token.string!r}); re-save the model with "
                            "torch.jit.save")
    return tokens


def _dotted(tokens: list[tokenize.TokenInfo], start: int) -> list[str]:
    """`a.b.c` from tokens[start] on: the names of one attribute chain."""
    chain, end = [tokens[start].string], start
    while (end + 2 < len(tokens) and tokens[end + 1].string == "."
           and tokens[end + 2].type == tokenize.NAME):
        chain.append(tokens[end + 2].string)
        end += 2
    return chain


def _refused_use(chain: list[str]) -> str | None:
    """What a chain rooted at `torch` / `ops` reaches that the policy refuses, or None."""
    host = next((HOST_OPS[name] for name in chain[1:] if name in HOST_OPS), None)
    if host:
        return host
    rest = chain[1:] if chain[0] == "ops" else chain[2:] if chain[1:2] == ["ops"] else None
    if rest and rest[0] not in OP_NAMESPACES:
        return f"ops.{rest[0]}.*"
    return None


def _class_namespace(chain: list[str]) -> str | None:
    """`torch.classes.<ns>` inside any chain (custom classes are typed `__torch__.torch.classes.ns.X`)."""
    for at in range(len(chain) - 2):
        if chain[at:at + 2] == ["torch", "classes"] and chain[at + 2] not in CLASS_NAMESPACES:
            return f"classes.{chain[at + 2]}.*"
    return None


def _refuse_duplicate_members(path: Path, names: list[str]) -> None:
    """Two members whose names differ at most in case: torch reads one of them under either name
    (torch.jit.save writes each member once)."""
    seen: set[str] = set()
    for name in names:
        key = name.lower()
        if key in seen:
            raise UserError(f"{path}: refused: the archive holds '{name}' twice (names compared "
                            "without case, as torch reads them); torch.jit.save writes each member once, "
                            "re-save the model with torch.jit.save")
        seen.add(key)


def check_archive_code(path: Path) -> None:
    """Refuse a TorchScript archive whose code reaches a host op or a library namespace, before
    torch.jit.load compiles it and runs its `__setstate__` methods.

    Serialized code reaches an op only through the names `torch` and `ops` (torch.jit.save
    writes every op as `torch.name(...)` or `ops.ns.name(...)`), so those chains are checked
    token by token and any other use of them (an alias, a getattr by string) is refused; a
    module's own attribute or method called `save` (`self.save`, `(sub).save(x)`) and strings
    that mention one are not ops and pass."""
    import torch

    try:
        with zipfile.ZipFile(path):
            pass  # a one-line reason for a file that is no zip at all
        # the records as torch.jit.load reads them (its own zip reader, which finds names without case:
        # `code/x.PY` is code too), not as Python's zipfile would
        reader = torch._C.PyTorchFileReader(str(path))
        names = reader.get_all_records()
        _refuse_duplicate_members(path, names)
        sources = [(name, reader.get_record(name)) for name in names if name.lower().endswith(".py")]
        pickles = [(name, reader.get_record(name)) for name in names if name.lower().endswith(".pkl")]
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise UserError(f"{path}: not a TorchScript file (torch.jit.save writes a zip archive: "
                        f"{' '.join(str(exc).split())[:200]}); for a state_dict checkpoint use "
                        f"--model pkg.module:factory --weights {path}") from exc
    for name, data in pickles:  # torch.jit.load runs the __setstate__ of the custom classes they name
        for namespace in _PICKLED_CLASS.findall(data):
            if namespace.decode() not in CLASS_NAMESPACES:
                raise _refusal(path, f"classes.{namespace.decode()}.*", f"its data ({name})")
    for name, data in sources:
        tokens, method = _tokens(path, name, data), "module code"
        for at, token in enumerate(tokens):
            if token.type != tokenize.NAME:
                continue
            previous = tokens[at - 1].string if at else ""
            if previous == "def" and tokens[at - 1].type == tokenize.NAME:
                method = token.string
            if previous == ".":
                continue  # inside a chain, read from its first name
            chain = _dotted(tokens, at)
            end = at + 2 * (len(chain) - 1)
            after = tokens[end + 1].string if end + 1 < len(tokens) else ""
            # a call, or the name declared (`ops : T` in a class body) or assigned, which only shadows it
            used_as_torch_writes_it = after == "(" or (len(chain) == 1 and after in (":", "="))
            where = f"{method} ({name})"
            refused = (_refused_use(chain) if token.string in _ROOTS
                       else HOST_OPS.get(token.string) if token.string in _RPC else None) or _class_namespace(chain)
            if refused:
                raise _refusal(path, refused, where)
            if token.string in _ROOTS and not used_as_torch_writes_it:  # `t = torch`, `getattr(ops.aten, "save")`
                raise UserError(f"{path}: refused: its code uses {'.'.join(chain)} as a value in {where}; "
                                "torch.jit.save writes every op as a direct call, and an alias or a getattr by "
                                "name hides which op runs; re-save the model with torch.jit.save")


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
