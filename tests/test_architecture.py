"""Module boundaries that keep targets pluggable, checked on the import statements (AST)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TENSORRT_BACKEND = "edgepipe.backends.tensorrt"
# the TensorRT targets (their plugin modules) and the backend itself may import it
TENSORRT_CODE = ("edgepipe/backends/tensorrt/", "targets/tensorrt_family.py", "targets/jetson.py",
                 "targets/desktop_gpu.py")
# every module of the accuracy package, and the commands that drive it
ACCURACY_TOOLS = ("edgepipe/accuracy/", "edgepipe/cli/accuracy.py")


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in `path` names (also imports inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def python_files() -> list[Path]:
    return sorted(p for folder in ("edgepipe", "targets") for p in (ROOT / folder).rglob("*.py"))


def test_only_tensorrt_code_imports_the_tensorrt_backend():
    offenders = []
    for path in python_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(TENSORRT_CODE):
            continue
        if any(m == TENSORRT_BACKEND or m.startswith(TENSORRT_BACKEND + ".") for m in imported_modules(path)):
            offenders.append(rel)
    assert offenders == []
    assert TENSORRT_BACKEND in imported_modules(ROOT / "targets/tensorrt_family.py")  # the check sees real imports


def test_accuracy_tools_quantize_through_the_target_not_a_backend():
    paths = [p for p in python_files() if p.relative_to(ROOT).as_posix().startswith(ACCURACY_TOOLS)]
    assert {p.name for p in paths} >= {"sensitivity.py", "precision.py", "qat.py", "compare.py", "accuracy.py"}
    for path in paths:
        backends = sorted(m for m in imported_modules(path) if m.startswith("edgepipe.backends"))
        assert backends == [], path


def test_no_backend_hard_codes_a_target_name():
    """The TFLite backend serves every TFLite target (profiles too): the caller names the target."""
    for path in (ROOT / "edgepipe/backends").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in ("arm-cpu", "jetson", "desktop-gpu"):
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} names target {node.value!r}")


def test_options_a_target_ignores_are_refused(tmp_path):
    """`backend.per_channel: false` on arm-cpu used to be ignored silently (TFLite weights are per channel)."""
    import yaml

    from tests.helpers import run_cli

    config = tmp_path / "edgepipe.yaml"
    config.write_text(yaml.safe_dump({"backend": {"per_channel": False}}))
    refused = run_cli("build", "--target", "arm-cpu", "--config", str(config), "--out", str(tmp_path / "b"),
                      cwd=tmp_path)
    assert refused.returncode == 2 and not (tmp_path / "b").exists()
    assert refused.stderr.strip().splitlines() == [
        "error: backend.per_channel: False has no effect on target 'arm-cpu' (it reads backend.threads, "
        "backend.int8_io, backend.keep_layout, backend.activations, backend.share_concat_scales, "
        "backend.float_output_concats, backend.wide_range_float, backend.float_long_recurrences); remove it or "
        "choose a target that uses it"]
    from edgepipe.targets import load_target

    load_target("jetson").check_backend_settings({"per_channel": False, "dla_core": 0})  # read by TensorRT
    load_target("arm-cpu").check_backend_settings({"per_channel": True, "int8_io": True})  # defaults pass


MODULE_PREFIXES = ("edgepipe.", "edgepipe.calibrate.", "edgepipe.backends.", "edgepipe.backends.tflite.",
                   "edgepipe.stages.", "edgepipe.delivery.", "edgepipe.accuracy.", "edgepipe.cli.")


def _resolve(dotted: str):
    """The object `dotted` names under one of edgepipe's packages (or the edgepipe.yaml key it names),
    or None when its first part is no module there (then it names a variable, e.g. `ds.sample`)."""
    import importlib

    from edgepipe.config import SCHEMA

    parts = dotted.split(".")
    section = SCHEMA.get(parts[0])
    if len(parts) == 2 and isinstance(section, dict) and parts[1] in section:  # a key, e.g. report.eval_limit
        return section[parts[1]]
    for prefix in MODULE_PREFIXES:
        try:
            obj = importlib.import_module(prefix + parts[0])
        except ModuleNotFoundError:
            continue
        for depth in range(1, len(parts)):
            try:
                obj = importlib.import_module(prefix + ".".join(parts[:depth + 1]))
                continue
            except ModuleNotFoundError:
                pass
            if not hasattr(obj, parts[depth]):
                raise AssertionError(f"docs/ARCHITECTURE.md names `{dotted}`, which does not exist")
            obj = getattr(obj, parts[depth])
        return obj
    return None


def test_architecture_doc_names_functions_that_exist():
    import re

    from edgepipe.targets import Target

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    files = ("py", "json", "yaml", "yml", "j2", "md", "npz", "onnx", "tflite", "html", "txt", "cache", "plan")
    names = {n for n in re.findall(r"`([a-z_]+(?:\.[A-Za-z_]+)+)(?:\(|`)", prose) if n.rsplit(".", 1)[1] not in files}
    resolved = {n for n in names if _resolve(n) is not None}
    assert {"cli.main.build", "eval_data.EvalSamples", "build.run_build", "settings.resolve_settings", "policy.choose"} <= resolved
    targets = prose.split("### Targets", 1)[1].split("###", 1)[0]
    for method in re.findall(r"^- `([a-z_]+)\(", targets, flags=re.M):
        assert callable(getattr(Target, method, None)), f"Target.{method} is in the doc but not in the code"


def test_bundle_writer_has_no_default_runner(tmp_path):
    """The runner is the target's choice; a missing one is a programming error, not TFLite by default."""
    import pytest

    from edgepipe.delivery.bundle import write_bundle

    with pytest.raises(ValueError, match="runner_template"):
        write_bundle(tmp_path / "b", target={"name": "t"}, files={}, template_context={"model_file": "m"},
                     io={"inputs": [], "outputs": []}, stages=[], source={}, extra_manifest={}, eval_data=None)
    assert not (tmp_path / "b").exists()


MAX_MODULE_LINES = 500  # the project's code-shape rule: a module that grows past it is split by concern


def test_every_module_stays_under_the_line_limit():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in python_files()}
    assert sizes["edgepipe/backends/tflite/lower.py"] > 100  # the count reads real files
    assert {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES} == {}
