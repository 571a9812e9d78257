"""Stage 2, simplify: onnxsim constant folding and shape simplification, never fatal.

onnxsim fails on some real models (custom domains, huge constants, ops its shape inference does
not know). A failed simplification is not a failed build: we keep the exported graph, warn, and
say so in the summary. The simplified graph is checked against the original in ONNX Runtime so a
simplifier bug cannot silently change the model.
"""

from __future__ import annotations

import importlib.abc
import sys

import numpy as np
import onnx

from edgepipe import graph
from edgepipe.inference_form import inference_form
from edgepipe.isolation import native_stderr_silenced


def run_simplify(model: onnx.ModelProto, check: bool = True, acceptable=None,
                 fuse: bool = True) -> tuple[onnx.ModelProto, dict]:
    """Return (model, report); report['status'] is 'simplified', 'skipped' or 'failed: ...'.
    fuse=False: constant folding and shape inference only, without onnxsim's optimizer (whose
    fusions, e.g. into com.microsoft::Attention, no target of ours may run).

    Whatever onnxsim did, the graph then gets its inference form (edgepipe/inference_form.py:
    Dropout removed, variadic Sum / Mean / Max / Min as binary chains; report['inference_form']),
    so the targets' op check after this stage and calibration see the same graph."""
    return _in_inference_form(*_run_onnxsim(model, check, acceptable, fuse))


def unfused(model: onnx.ModelProto, problem: str, acceptable=None) -> tuple[onnx.ModelProto, dict]:
    """onnxsim without its fusions, for a graph whose fused result the target cannot run (`problem`).

    Why not just the exported graph: an export's shape arithmetic (Shape -> Gather -> Concat for a
    Reshape, as PyTorch writes a batch dim) is folded only here, and a target with no Shape kernel
    then refused the user's first Shape node although the fixed-shape graph has none to run."""
    simplified, report = run_simplify(model, acceptable=acceptable, fuse=False)
    if report.get("status") == "simplified":
        return simplified, {**report, "note": f"{problem}; simplified without onnxsim's fusions"}
    return kept_export(model, f"{problem}; kept the exported graph")


def new_custom_ops(original: onnx.ModelProto, simplified: onnx.ModelProto) -> list[str]:
    """Op types in a custom domain that onnxsim's result has and the original graph does not."""
    def custom(model):
        return {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    return sorted(custom(simplified) - custom(original))


def kept_export(model: onnx.ModelProto, note: str) -> tuple[onnx.ModelProto, dict]:
    """The exported graph instead of onnxsim's result (status 'failed', `note`), in inference form."""
    return _in_inference_form(graph.ensure_node_names(model), {"status": "failed", "note": note})


def _in_inference_form(model: onnx.ModelProto, report: dict) -> tuple[onnx.ModelProto, dict]:
    rewritten, changes = inference_form(model)
    if any(changes.values()):
        model, report = graph.ensure_node_names(graph.refresh_shapes(rewritten)), {**report, "inference_form": changes}
    return model, report


def _run_onnxsim(model: onnx.ModelProto, check: bool = True, acceptable=None,
                 fuse: bool = True) -> tuple[onnx.ModelProto, dict]:
    """onnxsim's simplification, or the model unchanged and why (report['status']).

    `acceptable(original, simplified)` -> '' or why the result cannot be used: onnxsim fuses
    subgraphs into ops (an expanded RMSNormalization back into one node) that the target may not
    run, and a refusal must name a node of the user's graph, so such a result is not kept."""
    try:
        onnxsim = import_onnxsim()
    except ImportError:
        return model, {"status": "skipped", "note": "onnxsim is not installed"}
    before = len(model.graph.node)
    try:
        # BatchNorm folding is our own fold stage (readable, tested), not onnxsim's.
        # its C++ prints node names raw (terminal controls too), ONNX Runtime's error log and Python
        # tracebacks for ops it cannot fold; a failure is reported below, in one line
        with native_stderr_silenced(python_too=True):
            simplified, ok = onnxsim.simplify(model, check_n=0, skip_fuse_bn=True, perform_optimization=fuse)
    except Exception as exc:  # onnxsim raises RuntimeError, onnx errors, even SystemError
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return model, {"status": "failed", "note": f"onnxsim failed ({message}); kept the exported graph"}
    if not ok:
        return model, {"status": "failed", "note": "onnxsim could not validate its result; kept the exported graph"}
    if check:
        problem = _compare(model, simplified)
        if problem:
            return model, {"status": "failed", "note": f"simplified graph differs from the original ({problem}); kept the exported graph"}
    problem = acceptable(model, simplified) if acceptable is not None else ""
    if problem:
        return graph.ensure_node_names(model), {"status": "failed", "note": f"{problem}; kept the exported graph"}
    simplified = graph.ensure_node_names(graph.refresh_shapes(simplified))
    return simplified, {"status": "simplified", "nodes_before": before, "nodes_after": len(simplified.graph.node)}


OPTIONAL_IMPORTS = ("torch", "sympy")  # what onnxsim loads for features simplify() never uses


class _NotImported(importlib.abc.MetaPathFinder):
    """Makes `import torch` / `import sympy` (and their submodules) fail while it is on sys.meta_path."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in OPTIONAL_IMPORTS:
            raise ImportError(f"{name} is not imported while onnxsim loads (edgepipe.stages.simplify)")
        return None


def import_onnxsim():
    """onnxsim, imported without torch and sympy where it allows it.

    Why: some onnxsim releases import torch when the package loads, for an optional bridge they
    guard with try/except (PPQ), and sympy for the symbolic MAC counts its command line prints
    (model_info, also guarded); simplify() uses neither. Importing torch is most of a second of
    CPU time and a few hundred MB, sympy a few tenths of a second, in every build from an .onnx
    file. While onnxsim loads, importing them fails unless torch is already loaded (a module
    already imported is used as it is); an onnxsim that cannot load that way is loaded again as
    usual, so the result never depends on this.
    """
    if "onnxsim" in sys.modules or "torch" in sys.modules:
        import onnxsim

        return onnxsim
    blocker = _NotImported()
    sys.meta_path.insert(0, blocker)
    try:
        import onnxsim

        return onnxsim
    except ImportError:
        for name in [m for m in sys.modules if m == "onnxsim" or m.startswith("onnxsim.")]:
            del sys.modules[name]
    finally:
        sys.meta_path.remove(blocker)
    import onnxsim

    return onnxsim


def _compare(original: onnx.ModelProto, simplified: onnx.ModelProto) -> str:
    """'' when both graphs agree on a random input, else a short description."""
    try:
        feeds = {}
        rng = np.random.default_rng(0)
        for info in graph.graph_inputs(original):
            shape = [d if isinstance(d, int) else 1 for d in graph.tensor_shape(info)]
            dtype = graph.tensor_dtype(info)
            if np.issubdtype(dtype, np.floating):
                feeds[info.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[info.name] = np.zeros(shape, dtype=dtype)
        import onnxruntime as ort

        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # an invented feed the model rejects is expected: print nothing
        a = graph.make_session(original).run(None, feeds, quiet)
        b = graph.make_session(simplified).run(None, feeds, quiet)
    except Exception:
        return ""  # cannot run either; later stages report runtime problems with context
    for x, y in zip(a, b):
        if np.asarray(x).dtype.kind in "OSU":
            # strings (an ai.onnx.ml LabelEncoder's labels): equal or not, no float conversion
            if np.asarray(x).shape != np.asarray(y).shape or not np.array_equal(x, y):
                return "a non-numeric output differs"
            continue
        reduced = np.asarray(x).dtype in (np.float16,)  # one rounding there is already ~1e-3
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            return f"output shape {x.shape} vs {y.shape}"
        scale = max(float(np.max(np.abs(x))) if x.size else 0.0, 1e-6)
        with np.errstate(invalid="ignore"):  # inf - inf in both outputs: equal, not a warning to print
            difference = float(np.max(np.abs(x - y))) if x.size else 0.0
        # float16: onnxsim drops the Casts that run a Softmax in float32, which changes the result
        # by a float16 step; only an exact float16 graph is kept
        if difference > (0.0 if reduced else 1e-3 * scale):
            return f"max abs diff {difference:.3g}"
    return ""
