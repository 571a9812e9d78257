"""The project's security rules, checked on the source so a new call cannot slip past review.

Every call that could run code from a user's file or string goes through one reviewed place:
subprocesses take argument lists, torch.load is weights_only, numpy never unpickles, YAML goes
through safeio's SafeLoader, and TorchScript / torch.export files are opened only in
stages/torch_files.py, behind the op policy (stages/torch_op_policy.py).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("edgepipe", "targets", "benchmarks") for p in (ROOT / folder).rglob("*.py"))
TORCH_FILE_LOADERS = {"torch.jit.load": "edgepipe/stages/torch_files.py", "torch.export.load": "edgepipe/stages/torch_files.py"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "<expr>")  # `model().eval()` is not eval()
    return ".".join(reversed(parts))


def _calls():
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                keywords = {k.arg: k.value for k in node.keywords if k.arg}
                yield path.relative_to(ROOT).as_posix(), node.lineno, _dotted(node.func), keywords


def _is(value, constant) -> bool:
    return isinstance(value, ast.Constant) and value.value is constant


def test_no_call_can_run_code_from_a_users_file_or_string():
    problems = []
    for where, line, name, keywords in _calls():
        at = f"{where}:{line} {name}"
        if "shell" in keywords and not _is(keywords["shell"], False):
            problems.append(f"{at}: shell= (use an argument list)")
        if name in ("os.system", "os.popen", "eval", "exec", "pickle.load", "pickle.loads", "yaml.unsafe_load",
                    "yaml.full_load", "marshal.loads"):
            problems.append(f"{at}: runs or unpickles code")
        if name == "torch.load" and not _is(keywords.get("weights_only"), True):
            problems.append(f"{at}: torch.load without weights_only=True")
        if name.endswith(("np.load", "numpy.load", "read_array")) and "allow_pickle" in keywords \
                and not _is(keywords["allow_pickle"], False):
            problems.append(f"{at}: allow_pickle must stay False")
        if name == "yaml.load" and where != "edgepipe/safeio.py":
            problems.append(f"{at}: YAML goes through edgepipe.safeio (SafeLoader, no aliases)")
        if name in TORCH_FILE_LOADERS and where != TORCH_FILE_LOADERS[name]:
            problems.append(f"{at}: torch files are opened only behind the op policy in stages/torch_files.py")
    assert not problems, "\n".join(problems)


def test_the_rules_see_the_calls_they_guard():
    """The walk finds the reviewed calls themselves (a rule that matches nothing guards nothing)."""
    names = {name for _, _, name, _ in _calls()}
    assert {"torch.load", "torch.jit.load", "torch.export.load", "subprocess.run", "yaml.load"} <= names
