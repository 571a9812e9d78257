"""`edgepipe compare`: where the int8 accuracy goes, tensor by tensor along the graph.

Why: a build says "SQNR 24 dB"; a user who wants it higher needs to know *which* tensor loses
it. This runs the bundle's FP32 model (`reference.onnx`) and its deployed model side by side on
the bundle's eval data, reads every intermediate tensor of both under its ONNX name and reports
per tensor the SQNR and cosine of deployed vs FP32 (the error accumulated up to that tensor),
worst first. The deployed model is what the target ships, run on this host by the target
(`Target.deployed_probe`): the int8 .tflite in LiteRT for arm-cpu, the Q/DQ ONNX in ONNX Runtime
for TensorRT targets (host emulation, not the device's engine).

Accumulated error does not say which tensor *causes* it, so each quantized activation is also
measured alone: the model output SQNR with only that tensor on its int8 grid (everything else
float), emulated with the target's own placement where it has one (`Target.int8_placement`,
arm-cpu: the .tflite's grids, elementwise tensors included), else with only the layers reading
that tensor quantized in the target's Q/DQ simulation (`Target.qdq_model`). A tensor with a low
"alone" SQNR is a candidate for `precision.float_nodes` / `precision.budget`.

Anchors: Polygraphy `run --validate` / `debug precision` (per-layer comparison of two runners),
ai-edge-quantizer's per-layer validation (SQNR per tensor of the quantized vs float model).
"""

from __future__ import annotations

import math
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgepipe import graph, quantmath
from edgepipe.errors import UserError, one_line
from edgepipe.safeio import check_npz_members, ensure_regular_file
from edgepipe.settings import ReportSettings

COMPARE_FILE = "compare.json"
EVAL_FILE = "eval/eval.npz"


# -- reading tensors ---------------------------------------------------------------------------
class OnnxTensorProbe:
    """Runs an ONNX model in ONNX Runtime with its float intermediate tensors exposed as outputs.

    Tensors asked for by name (a model's outputs) are returned whatever their dtype: an integer
    output (an argmax label, top-k indices) is part of what the model answers."""

    def __init__(self, model: onnx.ModelProto, description: str, where: str, names: list[str] | None = None):
        self.description, self.where = description, where
        infos = graph.value_infos(graph.infer_shapes(model))
        produced = [out for node in model.graph.node for out in node.output if out]
        wanted = set(names) if names is not None else None
        self.tensors = [n for n in dict.fromkeys(produced) if n in wanted] if wanted is not None else [
            n for n in dict.fromkeys(produced) if n not in infos or infos[n].type.tensor_type.elem_type in _FLOAT_TYPES]
        self._any_dtype = wanted is not None
        self._inputs = [i.name for i in graph.graph_inputs(model)]
        self._session = graph.make_session(graph.expose_tensors(model, self.tensors))

    def run(self, feed: dict, reference: dict | None = None) -> dict[str, np.ndarray]:
        values = dict(zip(self.tensors, self._session.run(self.tensors, feed)))
        values.update({name: np.asarray(feed[name]) for name in self._inputs if name in feed})
        kinds = "fiub" if self._any_dtype else "f"
        return {k: v for k, v in values.items() if isinstance(v, np.ndarray) and v.dtype.kind in kinds}

    def close(self) -> None:
        self._session = None


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


class BundleEval:
    """The bundle's eval set (eval/eval.npz) as samples in ONNX layout: what run.py evaluates."""

    def __init__(self, bundle: Path, model: onnx.ModelProto, limit: int | None = None):
        path = bundle / EVAL_FILE
        if not path.is_file():
            raise UserError(f"{path}: the bundle has no eval data; rebuild it with --eval or --calib data")
        ensure_regular_file(path, what="bundle eval data")
        try:
            with zipfile.ZipFile(path) as archive:  # every member is read whole: bounded first (a zip bomb)
                names = [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
            check_npz_members(path, names, "eval array")
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, tokenize.TokenError, SyntaxError) as exc:
            raise UserError(f"{path}: not a readable .npz ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                            "rebuild the bundle") from None
        self.source = path
        self.ranks = {i.name: len(graph.tensor_shape(i)) for i in graph.graph_inputs(model)}
        missing = [name for name in self.ranks if f"input:{name}" not in arrays]
        if missing:
            raise UserError(f"{path}: no array 'input:{missing[0]}' for model input '{missing[0]}'; rebuild the bundle")
        self.inputs = {name: arrays[f"input:{name}"] for name in self.ranks}
        count = len(next(iter(self.inputs.values())))
        self.count = count if limit is None else min(count, limit)
        labels = arrays.get("labels")
        self.labels = None if labels is None else np.asarray(labels)[: self.count]
        self.references = {key.split(":", 1)[1]: value[: self.count] for key, value in arrays.items()
                           if key.startswith("reference:")}

    def __len__(self) -> int:
        return self.count

    def sample(self, i: int) -> dict[str, np.ndarray]:
        feed = {}
        for name, rank in self.ranks.items():
            value = self.inputs[name][i:i + 1]
            feed[name] = value[0] if value.ndim == rank + 1 else value  # an input without a batch axis
        return feed


# -- statistics --------------------------------------------------------------------------------
@dataclass
class _Accumulator:
    """Streaming SQNR / cosine of one tensor over samples (nothing but five sums is kept)."""

    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    test: float = 0.0
    max_abs: float = 0.0
    samples: int = 0

    def add(self, reference: np.ndarray, got: np.ndarray) -> None:
        ref = np.asarray(reference, np.float64).ravel()
        test = np.asarray(got, np.float64).ravel()
        diff = ref - test
        self.signal += float(ref @ ref)
        self.noise += float(diff @ diff)
        self.dot += float(ref @ test)
        self.test += float(test @ test)
        self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))) if diff.size else 0.0)
        self.samples += 1

    def sqnr_db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        return 10.0 * math.log10(max(self.signal, quantmath.TINY) / self.noise)

    def cosine(self) -> float:
        denom = math.sqrt(self.signal * self.test)
        return self.dot / denom if denom > 0 else float(self.noise == 0.0)


@dataclass
class TensorComparison:
    name: str
    producer: str  # op type of the node writing it ("input" for a graph input)
    position: int  # order along the graph (graph inputs first)
    sqnr_db: float
    cosine: float
    max_abs_error: float
    alone_sqnr_db: float | None = None  # output SQNR with only this tensor's readers quantized
    alone_nodes: tuple[str, ...] = ()


@dataclass
class CompareReport:
    target: str
    deployed: str  # what ran as the deployed model
    where: str  # "host" (the target's runtime here) or "host emulation"
    samples: int
    tensors: list[TensorComparison]  # graph order
    outputs: list[str]
    scheme: str = ""  # the int8 simulation the "alone" column used
    alone_samples: int = 0
    skipped: list[str] = field(default_factory=list)  # tensors the deployed model does not keep

    def worst_first(self) -> list[TensorComparison]:
        return sorted(self.tensors, key=lambda t: (t.sqnr_db, t.position))

    def to_json(self) -> dict:
        rows = []
        for rank, t in enumerate(self.worst_first(), 1):
            rows.append({"rank": rank, "name": t.name, "producer": t.producer, "position": t.position,
                         "sqnr_db": _finite(t.sqnr_db), "cosine": t.cosine, "max_abs_error": t.max_abs_error,
                         "alone_sqnr_db": _finite(t.alone_sqnr_db), "alone_nodes": list(t.alone_nodes),
                         "output": t.name in self.outputs})
        return {"schema": 1, "target": self.target, "deployed": self.deployed, "where": self.where,
                "samples": self.samples, "scheme": self.scheme, "alone_samples": self.alone_samples,
                "outputs": list(self.outputs), "tensors": rows, "skipped": sorted(self.skipped),
                "notes": "sqnr_db/cosine: deployed vs FP32 at this tensor (error accumulated up to it), null = "
                         "identical; alone_sqnr_db: model output SQNR with only this tensor quantized (int8 emulation "
                         "in ONNX Runtime, see scheme), null = not a quantized activation"}

    def text_table(self, top: int | None = 25) -> str:
        header = ("#", "tensor", "producer", "SQNR dB", "cosine", "max |err|", "alone dB")
        rows = [header]
        ranked = self.worst_first()
        for rank, t in enumerate(ranked[:top] if top else ranked, 1):
            name = t.name + (" (output)" if t.name in self.outputs else "")
            rows.append((str(rank), name, t.producer, _db(t.sqnr_db), f"{t.cosine:.5f}", f"{t.max_abs_error:.4g}",
                         "-" if t.alone_sqnr_db is None else _db(t.alone_sqnr_db)))
        rows = [tuple(one_line(c) for c in row) for row in rows]  # names from the model: one line, inert
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        head = (f"{self.target}: {self.deployed} ({self.where}) vs FP32 reference.onnx, {self.samples} samples; "
                f"{len(self.tensors)} tensors matched by ONNX name, worst first")
        notes = ["alone dB: model output SQNR with only this tensor quantized "
                 f"({self.scheme}, {self.alone_samples} samples)" if self.alone_samples else
                 "alone dB: not measured (--no-alone)"]
        if self.skipped:
            notes.append(f"not compared: {len(self.skipped)} FP32 tensors have no counterpart in the deployed model "
                         "(fused or folded away)")
        return "\n".join([head] + lines + notes)


def _finite(value):
    return None if value is None or math.isinf(value) or math.isnan(value) else float(value)


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


# -- the comparison ----------------------------------------------------------------------------
def compare_bundle(bundle: str | Path, max_samples: int | None = 64, alone: bool = True,
                   alone_samples: int = 32) -> CompareReport:
    """Compare the bundle's deployed model with its FP32 reference, tensor by tensor."""
    from edgepipe.calibrate.result import CalibrationResult
    from edgepipe.delivery.bundle import check_manifest_fields, verify_bundle
    from edgepipe.jsonfile import read_json
    from edgepipe.targets import load_target

    bundle = Path(bundle)
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{bundle}: not an edgepipe bundle (no manifest.json); pass the folder `edgepipe build` wrote")
    manifest = check_manifest_fields(read_json(manifest_path, "bundle manifest", "rebuild the bundle"), manifest_path)
    problems = verify_bundle(bundle)  # as deploy: a changed model or eval.npz is named, never run
    if problems:
        raise UserError(f"{bundle}: refusing to compare a bundle that fails `edgepipe verify`: {problems[0]}")
    target_info = manifest.get("target") or {}
    name = str(target_info.get("name") or "")
    # a bundle built from a profile YAML names the profile; its registered plugin runs the model
    target = load_target(str(target_info.get("plugin") or name), target_info.get("options") or {})
    reference_path = bundle / "reference.onnx"
    if not reference_path.is_file():
        raise UserError(f"{reference_path}: missing; rebuild the bundle")
    reference = graph.ensure_node_names(graph.load_model(reference_path))
    calibration = CalibrationResult.load(bundle / "calibration.json") if alone else None  # before any work
    backend = _backend_settings(manifest, manifest_path)
    data = BundleEval(bundle, reference, max_samples)
    probe = target.deployed_probe(bundle, manifest)
    if probe is None:
        raise UserError(f"target '{target.name}' cannot run its deployed model on this host; compare needs "
                        "the target's runtime here")
    fp32 = OnnxTensorProbe(reference, "reference.onnx", "host")
    order = _graph_order(reference)
    stats: dict[str, _Accumulator] = {}
    seen: set[str] = set()
    try:
        for i in range(len(data)):
            feed = data.sample(i)
            want = fp32.run(feed)
            got = probe.run(feed, want)
            seen.update(want)
            for tensor, value in got.items():
                if tensor in want and want[tensor].size == value.size:
                    stats.setdefault(tensor, _Accumulator()).add(want[tensor], value.reshape(want[tensor].shape))
    finally:
        probe.close()
        fp32.close()
    producers = {out: node.op_type for node in reference.graph.node for out in node.output}
    tensors = [TensorComparison(t, producers.get(t, "input"), order.get(t, len(order)), acc.sqnr_db(), acc.cosine(),
                                acc.max_abs) for t, acc in stats.items()]
    tensors.sort(key=lambda t: t.position)
    outputs = [o.name for o in reference.graph.output]
    report = CompareReport(target.name, probe.description, probe.where, len(data), tensors, outputs,
                           skipped=sorted(seen - set(stats)))
    if alone:
        report.scheme, report.alone_samples = _measure_alone(report, reference, calibration, data, target,
                                                             alone_samples, backend)
    return report


def _graph_order(model: onnx.ModelProto) -> dict[str, int]:
    order = {i.name: 0 for i in graph.graph_inputs(model)}
    for index, node in enumerate(model.graph.node, 1):
        for out in node.output:
            order.setdefault(out, index)
    return order


def _backend_settings(manifest: dict, manifest_path: Path) -> dict:
    """The `backend.*` settings the bundle was built with (its manifest records them), validated
    like edgepipe.yaml's: the placement emulation must be the one the bundle ships (wide-range
    tensors kept float or not, ...). A bundle from before they were recorded: the defaults."""
    from edgepipe.config import SCHEMA, validate

    recorded = manifest.get("backend_settings") or {}
    if not isinstance(recorded, dict):
        raise UserError(f"{manifest_path}: 'backend_settings' must be a mapping; rebuild the bundle")
    validate(recorded, str(manifest_path), SCHEMA["backend"], "backend_settings.")
    return recorded


def _measure_alone(report: CompareReport, model, calibration, data: BundleEval, target, samples: int,
                   backend: dict):
    """Fill `alone_sqnr_db`: one variant per quantized activation. With the target's own placement
    (`Target.int8_placement`, arm-cpu: the .tflite's grids, under the bundle's `backend` settings)
    only that tensor is on its int8 grid; otherwise only its readers are quantized in the target's
    Q/DQ simulation (`Target.qdq_model`)."""
    from edgepipe.accuracy.sensitivity import VariantEvaluator

    evaluator = VariantEvaluator(model, calibration, data, target=target, max_samples=samples, use_placement=True,
                                 backend=backend)
    by_name = {t.name: t for t in report.tensors}
    if evaluator.switchable is not None:
        for group in evaluator.groups():
            tensor = group.activations[0] if group.activations else None
            if tensor in by_name:
                by_name[tensor].alone_sqnr_db = evaluator.evaluate_alone(group).sqnr_db
                by_name[tensor].alone_nodes = tuple(group.nodes)
        return f"{target.name}'s own int8 grids ({evaluator.placement.description})", len(evaluator)
    quantized = evaluator.qdq_report["quantized_nodes"]
    readers: dict[str, list[str]] = {}
    for node, entry in quantized.items():
        for tensor in entry["inputs"]:
            if tensor in calibration:
                readers.setdefault(tensor, []).append(node)
    everything = set(quantized)
    for tensor, nodes in readers.items():
        if tensor not in by_name:
            continue
        metrics = evaluator.evaluate(everything - set(nodes))
        by_name[tensor].alone_sqnr_db = metrics.sqnr_db
        by_name[tensor].alone_nodes = tuple(sorted(nodes))
    scheme = "symmetric" if evaluator.symmetric else "asymmetric"
    return f"{scheme} Q/DQ simulation of {target.name}, only the tensor's readers quantized", len(evaluator)


# -- whole-model accuracy on the host (TensorRT targets' host emulation) -----------------------
def host_accuracy(bundle: str | Path, probe) -> dict:
    """results.json `accuracy` for the bundle's deployed model run by `probe` on the eval data.

    The keys mirror run.py's (`outputs` with per-output SQNR/cosine/agreement, `top1` vs labels
    for a classifier), so the report and `regress` read host emulation like a device run."""
    bundle = Path(bundle)
    reference = graph.load_model(bundle / "reference.onnx")
    data = BundleEval(bundle, reference)
    names = [o.name for o in reference.graph.output]
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in names}
    try:
        for i in range(len(data)):
            got = probe.run(data.sample(i), None)
            for name in names:
                value = np.asarray(got[name])
                outputs[name].append(value if value.dtype.kind in "iub" else value.astype(np.float32))
    finally:
        probe.close()
    per_output, classifier = {}, None
    for name in names:
        got = np.concatenate([v.reshape(1, -1) for v in outputs[name]])
        ref = data.references.get(name)
        entry: dict = {"shape": list(outputs[name][0].shape[1:])}
        if ref is not None and ref.size == got.size and got.dtype.kind in "iub":
            entry["exact_match"] = float(np.mean(np.all(ref.reshape(got.shape) == got, axis=1)))
        elif ref is not None and ref.size == got.size and got.size:  # an empty output has nothing to measure
            entry.update(_agreement(ref, outputs[name]))
            ref = ref.reshape(got.shape)
            entry.update({"sqnr_db": _finite(quantmath.sqnr_db(ref, got)), "cosine": quantmath.cosine(ref, got),
                          "max_abs_error": float(np.max(np.abs(ref.astype(np.float64) - got)))})
            if classifier is None and outputs[name][0].ndim == 2 and got.shape[1] >= 2:
                classifier = name
        per_output[name] = entry
    accuracy = {"outputs": per_output, "classifier_output": classifier, "top1": None, "fp32_top1": None,
                "argmax_agreement": None}
    if classifier is not None:
        accuracy["argmax_agreement"] = per_output[classifier]["argmax_agreement"]
        if data.labels is not None:
            got = np.concatenate(outputs[classifier]).reshape(len(data), -1)
            labels = data.labels.astype(np.int64)
            accuracy["top1"] = float(np.mean(got.argmax(axis=1) == labels))
            ref = data.references[classifier].reshape(len(data), -1)
            accuracy["fp32_top1"] = float(np.mean(ref.argmax(axis=1) == labels))
    return accuracy


def _agreement(reference: np.ndarray, samples: list[np.ndarray]) -> dict:
    """`argmax_agreement` per position along `quantmath.class_axis` (run.py's rule) and that axis
    (`argmax_axis`, in the [N, ...] shape), or neither when the output has no class axis."""
    rows = [v if v.ndim and v.shape[0] == 1 else v[None] for v in samples]  # one row per sample, as run.py
    got = np.concatenate(rows)
    axis = quantmath.class_axis(samples[0].shape)  # of the output as the model writes it ([T, 1, C] too)
    if axis is None:
        return {}
    axis += got.ndim - samples[0].ndim  # a batch axis added for the rows
    return {"argmax_agreement": quantmath.argmax_agreement(reference.reshape(got.shape), got, axis),
            "argmax_axis": axis}


def accuracy_warning(accuracy: dict | None, thresholds: ReportSettings, bundle: Path, where: str) -> str | None:
    """One line when int8 agrees poorly with FP32: an output SQNR below `min_sqnr_db` or an argmax
    agreement below `min_agreement` (edgepipe.yaml `report:`), pointing to the tools that fix it."""
    accuracy = accuracy or {}
    min_sqnr = float(thresholds.min_sqnr_db)
    min_agreement = float(thresholds.min_agreement)
    problems = []
    for name, entry in sorted((accuracy.get("outputs") or {}).items()):
        sqnr = entry.get("sqnr_db") if isinstance(entry, dict) else None
        if isinstance(sqnr, (int, float)) and sqnr < min_sqnr:
            problems.append(f"output '{name}' SQNR {sqnr:.1f} dB < {min_sqnr:g} dB")
        equal = entry.get("exact_match") if isinstance(entry, dict) else None
        if isinstance(equal, (int, float)) and equal < min_agreement:
            problems.append(f"integer output '{name}' equals FP32's on {equal:.3f} of samples < {min_agreement:g}")
    agreement = accuracy.get("argmax_agreement")
    if isinstance(agreement, (int, float)) and agreement < min_agreement:
        problems.append(f"argmax agreement {agreement:.3f} < {min_agreement:g}")
    if not problems:
        return None
    return (f"accuracy: int8 vs FP32 ({where}): {'; '.join(problems)}; run `edgepipe compare {bundle}` to see "
            "which tensors lose it, and set precision.budget in edgepipe.yaml to keep them in float "
            "(thresholds: report.min_sqnr_db, report.min_agreement)")


__all__ = ["accuracy_warning", "compare_bundle", "CompareReport", "TensorComparison", "OnnxTensorProbe", "BundleEval",
           "host_accuracy", "COMPARE_FILE"]
