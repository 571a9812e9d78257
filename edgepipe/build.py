"""`edgepipe build`: export → simplify → fold → calibrate → backend → bundle → (host) report.

Follow one model from here to the bundle, stage by stage; settings come resolved from
edgepipe/settings.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepipe import __version__, graph, loops
from edgepipe.recurrent import RECURRENT
from edgepipe.build_checks import run_checks
from edgepipe.delivery.bundle import check_out_dir
from edgepipe.delivery.outdir import BACKEND_TMP_PREFIX
from edgepipe.safeio import JSON_MAX_BYTES, ensure_regular_file, ensure_regular_or_dir
from edgepipe.errors import UserError
from edgepipe.modelcheck import check_label_range, check_model
from edgepipe.token_ids import check_token_ids
from edgepipe.pipeline import Pipeline, bytes_hash, settings_hash
from edgepipe.target_checks import (check_int16_nodes, check_structure, check_target_support,
                                     foldable_batchnorms, introduced_ops_check)
from edgepipe.settings import (ReportSettings, data_fingerprint, data_preprocess, fold_settings_of,
                               initial_input_shapes, require_calib, to_model_domain)


@dataclass
class BuildResult:
    target: str
    out: Path
    stages: list[dict]
    manifest: dict
    warnings: list[str] = field(default_factory=list)
    results: dict | None = None  # host results.json when the target ran on this host
    report_html: Path | None = None
    eval_note: str = ""  # which samples evaluate the bundle, and how many it keeps
    calibration_stability: dict | None = None  # output effect of the unstable thresholds (None: none unstable)

    def to_json(self) -> dict:
        return {
            "ok": True,
            "target": self.target,
            "out": str(self.out),
            "stages": self.stages,
            "files": [f["path"] for f in self.manifest.get("files", [])],
            "warnings": self.warnings,
            "results": self.results,
            "report_html": str(self.report_html) if self.report_html else None,
            "eval": self.eval_note,
            "calibration_stability": self.calibration_stability,
        }


# -- the build -----------------------------------------------------------------------------
@dataclass
class PreparedModel:
    """The folded FP32 model the backends lower, and the data in its input domain."""

    model: object
    calib: object
    eval: object | None
    source_hash: str
    simplify_report: dict
    fold_report: dict
    warnings: list[str]
    eval_source: str = "eval"  # eval (--eval) | holdout (held out of the calibration set) | none
    eval_note: str = ""


def prepare_model(settings: dict, pipeline: Pipeline, target=None) -> PreparedModel:
    """Stages 1-3: export, simplify, fold (each cached), plus the calibration and eval datasets.

    When a target is given, its unsupported ops are reported right after simplify: before fold
    runs the graph and before any output file exists.
    """
    from edgepipe.data import load_dataset
    from edgepipe.stages import float16, float64
    from edgepipe.stages.export import run_export, source_fingerprint
    from edgepipe.stages.fold import run_fold, settings_that_apply
    from edgepipe.stages.simplify import run_simplify, unfused

    warnings: list[str] = []
    if target is not None and not settings.get("calib") and not settings.get("input_values"):
        check_structure(settings["model"], target)  # before "no calibration data" for a model that can never build
    # 1. export: never cached. What a factory exports depends on every module it imports, so only
    # the exported graph itself is a trustworthy key; the later stages are keyed by its bytes.
    shapes = initial_input_shapes(settings)
    source_hash = source_fingerprint(settings["model"], settings.get("weights"))
    output_names = settings.get("output_names")
    model, _ = pipeline.model_stage(
        "export", None,
        lambda: (run_export(settings["model"], settings.get("weights"), shapes, settings["opset"], output_names,
                            settings.get("input_values"), settings.get("input_shapes") or {}, warnings), {}),
    )

    check_model(model, str(settings["model"]))  # no inputs, allocation bombs
    unrolled = loops.unroll_for(model, target)  # a target without Loop: tf2onnx's while-loop RNNs written out
    loops_unrolled, model = unrolled is not model, unrolled
    float32_io = bool(target is not None and target.float32_io)
    model, half_tensors = float16.to_float32(model, keep_io=not float32_io)
    if half_tensors:
        io = "float32" if float32_io else "as in the model, cast at the boundary"
        warnings.append(f"model: float16 model computed in float32 for calibration and int8 ({half_tensors} tensors, "
                        f"types and casts upcast exactly); inputs and outputs: {io}")
    double_tensors = 0
    if target is not None and not target.float64_kernels:
        inputs = float64.double_inputs(model)
        model, double_tensors, first = float64.to_float32(model, str(settings["model"]), target.name)
        if double_tensors:
            named = ", ".join(repr(n) for n in inputs[:4]) + (" ..." if len(inputs) > 4 else "")
            io = (f"float64 input(s) {named} take float32 (run.py casts the data); outputs: float32" if inputs
                  else "its outputs: float32")
            warnings.append(f"model: float64 computed in float32 on {target.name}, which has no float64 kernels "
                            f"({double_tensors} tensors, types and casts, the first at node '{first}'); {io}")

    # 2. simplify (target-independent, so a second target reuses it; a graph the target retyped -
    # float64 / float16 computed in float32 - is keyed by its own bytes, not the export's)
    exported, export_hash = model, pipeline.last_hash
    if half_tensors or double_tensors or loops_unrolled:
        export_hash = bytes_hash(model.SerializeToString(deterministic=True))
    model, simplify_report = pipeline.model_stage(
        "simplify", settings_hash(stage="simplify", model=export_hash), lambda: run_simplify(exported))
    simplified = target is not None and simplify_report.get("status") == "simplified"
    problem = introduced_ops_check(target)(exported, model) if simplified else ""
    if problem:  # onnxsim fused the user's nodes into an op this target cannot run: simplify without fusing
        model, simplify_report = pipeline.model_stage(
            "simplify", settings_hash(stage="simplify-unfused", model=export_hash, target=target.name),
            lambda: unfused(exported, problem, introduced_ops_check(target)),
        )
    if simplify_report.get("status") == "failed":
        warnings.append(f"simplify: {simplify_report.get('note')}")

    fold_settings = settings_that_apply(model, fold_settings_of(settings, target))
    if target is not None:  # ops the fold stage rewrites are checked after it
        check_target_support(model, target, ignore=foldable_batchnorms(model) if fold_settings.get("batchnorm", True) else set())

    # data for the deployed (folded) model
    specs = {i.name: (tuple(graph.tensor_shape(i)), graph.tensor_dtype(i)) for i in graph.graph_inputs(model)}
    preprocess = data_preprocess(settings)
    calib_ds = to_model_domain(
        load_dataset(require_calib(settings), specs, preprocess, limit=settings["calibration"].get("max_samples")),
        settings)
    check_token_ids(model, calib_ds, "calibration")
    eval_ds, eval_source = None, "eval"
    if calib_ds.ignored_members:
        warnings.append(f"{calib_ds.source.name}: arrays {calib_ds.ignored_members[:5]} name no model input "
                        f"(inputs: {calib_ds.names}) and were not used")
    if settings.get("eval"):
        eval_ds = to_model_domain(
            load_dataset(settings["eval"], specs, preprocess, limit=settings["report"].eval_limit), settings)
        check_token_ids(model, eval_ds, "eval")
        eval_note = f"{len(eval_ds)} samples of {settings['eval']}"
        if _same_data(settings["eval"], settings["calib"]):  # the holdout exists to avoid exactly this
            warnings.append(f"--eval {settings['eval']} is the --calib data: the accuracy report measures samples "
                            "the int8 ranges were fitted to, which flatters int8; pass held-out data, or leave "
                            "--eval out (a share of --calib is then held out)")
    else:
        calib_ds, eval_ds, eval_source, eval_note = hold_out(calib_ds, settings["report"])
    check_label_range(model, eval_ds, str(settings.get("eval") or settings["calib"]))  # before any work

    # 3. fold
    needs_eval = str(fold_settings.get("temperature", "none")) == "auto"
    fold_key = settings_hash(
        stage="fold", model=pipeline.last_hash, settings=fold_settings,
        calib=data_fingerprint(settings["calib"]) + calib_split_key(settings)
        if fold_settings["input_normalization"] in ("zca", "pca") or fold_settings.get("cross_layer_equalization")
        else "",  # folds that read the calibration data (whitening, equalization on measured ranges)
        eval=(data_fingerprint(settings.get("eval") or settings["calib"]) + calib_split_key(settings)) if needs_eval else "",
    )
    model, fold_report = pipeline.model_stage(
        "fold", fold_key, lambda: run_fold(model, fold_settings, calib_ds, eval_ds)
    )
    if target is not None:
        check_target_support(model, target)
    return PreparedModel(model, calib_ds, eval_ds, source_hash, simplify_report, fold_report, warnings,
                         eval_source, eval_note)


def _same_data(first, second) -> bool:
    try:
        return os.path.samefile(first, second)
    except (OSError, TypeError, ValueError):
        return False


def hold_out(calib_ds, report: ReportSettings):
    """Without --eval: (calibration part, held-out eval part or None, source, note for the user).

    Evaluating on the samples the ranges were fitted to flatters the accuracy, so a deterministic
    share (`report.holdout`, stratified by label) is held out and never calibrated on."""
    from edgepipe.sampling import holdout_split

    fraction = float(report.holdout or 0)
    if fraction >= 1:
        raise UserError(f"report.holdout is {fraction:g}: it is the fraction of the calibration samples held out "
                        "for evaluation, set it below 1 (default 0.1) or pass --eval")
    keep, held = holdout_split(calib_ds, fraction, report.eval_limit)
    if len(held) == 0:
        return calib_ds, None, "none", ("no --eval and no calibration samples held out (report.holdout "
                                        f"{fraction:g}, {len(calib_ds)} samples): no accuracy is reported")
    stratified = ", stratified by label" if calib_ds.labels is not None else ""
    note = (f"no --eval: {len(held)} of {len(calib_ds)} calibration samples held out for evaluation{stratified}, "
            f"calibrating on the other {len(keep)}")
    return calib_ds.subset(keep), calib_ds.subset(held), "holdout", note


def calib_split_key(settings: dict) -> str:
    """Cache-key part for which calibration samples are calibrated on (the holdout takes some)."""
    if settings.get("eval"):
        return ""
    report = settings["report"]
    return f"|holdout={float(report.holdout or 0)!r}|cap={report.eval_limit}"


def check_out_outside_data(out: Path, settings: dict) -> None:
    """Refuse an --out inside the --calib / --eval folder: the first build succeeded and every later
    one read the bundle's own eval.npz (or the bundle as a class folder) as samples; and a cache_dir
    inside --out (the build ran every stage, then refused the folder its cache had made)."""
    resolved = out.resolve()
    for key in ("calib", "eval"):
        folder = Path(settings[key]) if settings.get(key) else None
        if folder is not None and folder.is_dir() and resolved.is_relative_to(folder.resolve()):
            raise UserError(f"--out {out}: is inside the --{key} folder {folder}; the next build would read the "
                            "bundle as samples, choose an --out outside it")
    cache = settings.get("cache_dir")
    if cache and Path(cache).resolve().is_relative_to(resolved):  # found only after every stage had run
        raise UserError(f"cache_dir {cache}: is inside --out {out}, which the bundle replaces; set cache_dir to a "
                        "folder outside the bundle (default build/.cache)")


def run_build(settings: dict, origin: str = "config", log=None, progress_factory=None) -> BuildResult:
    from edgepipe.calibrate.result import CalibrationResult
    from edgepipe.stages.calibrate import run_calibration
    from edgepipe.targets import load_target

    log = log or (lambda message: None)
    backend_settings = {k: v for k, v in (settings.get("backend") or {}).items() if v is not None}
    target = load_target(settings["target"], {k: v for k, v in backend_settings.items() if k == "threads"})
    target.check_backend_settings(backend_settings)
    target.check_precision_settings(settings["precision"])
    check_out_dir(Path(settings["out"]))  # before any work: a wrong --out costs nothing and loses nothing
    for key in ("model", "weights", "calib", "eval"):  # a FIFO or device would block a reader forever
        if settings.get(key):
            ensure_regular_or_dir(settings[key], f"--{key}")
    check_out_outside_data(Path(settings["out"]), settings)
    pipeline = Pipeline(settings.get("cache_dir"), log)
    prepared = prepare_model(settings, pipeline, target)
    model, calib_ds, eval_ds = prepared.model, prepared.calib, prepared.eval
    warnings = list(prepared.warnings)
    log(f"evaluation data: {prepared.eval_note}")

    # 4. calibrate
    calib_settings = dict(settings["calibration"])
    bias_correction = calib_settings.pop("bias_correction", "auto")  # runs after the cached ranges
    # per-step ranges are for TFLite's unrolled LSTM / GRU / RNN; TensorRT runs them whole and float.
    # Keyed only when the model has one, so targets still share the calibration of any other model.
    unroll_recurrent = target.backend == "tflite"
    recurrent_key = unroll_recurrent if any(n.op_type in RECURRENT for n in model.graph.node) else None
    calib_key = settings_hash(stage="calibrate", model=pipeline.last_hash,  # the fold stage's artifact
                              data=data_fingerprint(settings["calib"]) + calib_split_key(settings), settings=calib_settings,
                              preprocess=data_preprocess(settings), unroll_recurrent=recurrent_key)
    progress = progress_factory("calibrating", len(calib_ds)) if progress_factory else None
    if calib_settings.get("ranges"):
        calibration = pipeline.run(
            "calibrate", lambda: load_ranges(calib_settings["ranges"], model),
            describe=lambda r: (f"{calib_settings['ranges']} ({len(r.tensors)} tensors, given)", 0, ""),
        )
    else:
        calibration = None
    calibration = calibration or pipeline.cached(
        "calibrate", calib_key,
        lambda: run_calibration(model, calib_ds, calib_settings, progress=progress, unroll_recurrent=unroll_recurrent),
        save=lambda result, d: result.save(d / "calibration.json"),
        load=lambda d: CalibrationResult.load(d / "calibration.json"),
        describe=_describe_calibration,
        note=lambda r: f"{len(r.warnings)} warning(s)" if r.warnings else "",
    )
    warnings.extend(f"calibration: {w}" for w in calibration.warnings)
    stability_effect, stability_warning = run_checks(pipeline, model, calibration, calib_ds, target, backend_settings,
                                                     bias_correction)
    if stability_warning:
        warnings.append(f"calibration: {stability_warning}")

    # 4b. automatic mixed precision to an accuracy budget (sensitivity-ranked float islands)
    from edgepipe.accuracy.precision import summary_line

    float_nodes = set(settings["precision"].float_nodes)
    int16_nodes = check_int16_nodes(model, settings["precision"]) if settings["precision"].int16_nodes else set()
    extra_files: dict[str, bytes] = {}
    if settings["precision"].budget is not None:
        plan = pipeline.run(
            "precision", lambda: plan_precision(model, calibration, eval_ds or calib_ds, settings, target),
            describe=lambda p: (f"precision.json ({len(p.float_nodes)} float nodes)", 0, ""),
            note=lambda p: summary_line(p.summary()),
        )
        float_nodes |= set(plan.float_nodes)
        int16_nodes |= set(getattr(plan, "int16_nodes", ())) - float_nodes  # a plan's 16x8 nodes (arm-cpu)
        if not plan.met:
            warnings.append(f"precision: {plan.reason}")
        extra_files["precision.json"] = _json_bytes(plan.to_json())
        if plan.sensitivity is not None:
            extra_files["sensitivity.json"] = _json_bytes(plan.sensitivity.to_json())

    if int16_nodes:  # the target's backend option (arm-cpu: lowered 16x8, the rest int8)
        backend_settings["int16_nodes"] = sorted(int16_nodes)
    out = Path(settings["out"])
    try:
        manifest = write_outputs(out, settings, target, pipeline, prepared, calibration, float_nodes, extra_files,
                                 backend_settings, origin)
    except OSError as exc:  # disk full, permission denied, file size limit: the user's machine
        raise UserError(f"{out}: cannot write the bundle ({exc.strerror or exc}); the previous bundle is "
                        "unchanged - free disk space or fix permissions and rebuild") from exc

    result = BuildResult(target.name, out, pipeline.summary(), manifest, [*pipeline.warnings, *warnings],
                         eval_note=eval_summary(prepared, manifest), calibration_stability=stability_effect)
    # 7. int8 vs FP32 on this host: the target's runtime (arm-cpu: run.py), else its emulation
    if settings["report"].host:
        from edgepipe.delivery.host_report import run_host_emulation, run_host_report

        measure = run_host_report if target.host_report else run_host_emulation
        pipeline.run(
            "report", lambda: measure(out, settings, target, result),
            describe=lambda r: ("report/report.html", (out / "report" / "report.html").stat().st_size
                                if (out / "report" / "report.html").exists() else 0, ""),
        )
        result.stages = pipeline.summary()
    return result


def write_outputs(out: Path, settings: dict, target, pipeline: Pipeline, prepared: PreparedModel, calibration,
                  float_nodes: set, extra_files: dict, backend_settings: dict, origin: str) -> dict:
    """Stages 5-6: lower with the target's backend into a temp dir, then write the bundle atomically."""
    from edgepipe.delivery.bundle import write_bundle

    model, eval_ds = prepared.model, prepared.eval
    with tempfile.TemporaryDirectory(prefix=f"{BACKEND_TMP_PREFIX}{os.getpid()}-") as backend_tmp:
        backend_dir = Path(backend_tmp)
        # 5. backend
        backend_options = {**backend_settings, "float_nodes": sorted(float_nodes)}
        backend = pipeline.run(
            "backend", lambda: target.build_backend(model, calibration, backend_dir, backend_options),
            describe=lambda r: (", ".join(r.files), sum((backend_dir / f).stat().st_size for f in r.files),
                                _files_hash(backend_dir, r.files)),
            note=lambda r: r.note,
        )
        # 6. bundle
        eval_data = reference_eval_data(model, eval_ds, settings["report"], prepared.eval_source)
        files = {name: backend_dir / name for name in backend.files}
        files["reference.onnx"] = model.SerializeToString(deterministic=True)
        files["calibration.json"] = _json_bytes(calibration.to_json())
        files.update(extra_files)
        manifest = pipeline.run(
            "bundle",
            lambda: write_bundle(
                out,
                target=target.describe(),
                files=files,
                template_context={"runner_template": target.runner_template, **backend.template_context},
                io=backend.io,
                stages=[{"name": r.name, "hash": r.hash} for r in pipeline.records],
                source={"model": str(settings["model"]), "sha256": prepared.source_hash, "origin": origin},
                extra_manifest={**backend.manifest, "fold": _public_fold_report(prepared.fold_report),
                                # what `compare` emulates the bundle's placement with (Target.int8_placement)
                                "backend_settings": {k: backend_settings[k] for k in target.backend_options
                                                     if k in backend_settings},
                                "simplify": prepared.simplify_report, "edgepipe_version": __version__},
                eval_data=eval_data,
                hooks=_bundle_hooks(),
                template_packages=target.template_packages(),
            ),
            describe=lambda m: (f"{out} ({len(m.get('files', []))} files)",
                                sum(f.get("size", 0) for f in m.get("files", [])),
                                bytes_hash(json.dumps(m.get("files", []), sort_keys=True).encode())),
            note=lambda m: f"eval {m['eval']['samples']} of {m['eval']['available']} samples" if m.get("eval") else "no eval data",
        )
    return manifest


def _describe_calibration(calibration) -> tuple[str, int, str]:
    """The calibrate stage's record: JSON size and hash from one serialization (key order does not
    change the length)."""
    text = json.dumps(calibration.to_json(), sort_keys=True)
    return f"calibration.json ({len(calibration.tensors)} tensors)", len(text), bytes_hash(text.encode())


def load_ranges(path: str, model):
    """Ranges given by the user (QAT's learned ranges) instead of calibrating.

    Checks the model inputs here (ranges made for another model fail fast); a backend that needs
    the range of a tensor the file lacks reports that tensor itself."""
    from edgepipe.calibrate.result import CalibrationResult

    try:
        ensure_regular_file(path, JSON_MAX_BYTES, "calibration ranges file (calibration.ranges)")
        calibration = CalibrationResult.load(path)
    except FileNotFoundError:
        raise UserError(f"{path}: calibration ranges file not found (calibration.ranges)") from None
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise UserError(f"{path}: not a calibration.json / .ranges.json file ({type(exc).__name__}: {exc})") from exc
    missing = [i.name for i in graph.graph_inputs(model) if i.name not in calibration.tensors]
    if missing:
        raise UserError(f"{path}: no range for model input '{missing[0]}'; the ranges were made for another model")
    return calibration


def plan_precision(model, calibration, dataset, settings: dict, target):
    """Greedy mixed precision to `precision.budget` (see edgepipe/accuracy/precision.py)."""
    from edgepipe.accuracy.precision import plan_on_target

    return plan_on_target(model, calibration, dataset, settings["precision"].budget, target,
                          settings.get("backend"), levels=settings["precision"].levels)


def _json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=True, default=str) + "\n").encode()


def _files_hash(root: Path, names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode())
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def _public_fold_report(report: dict) -> dict:
    """The fold report as the manifest records it (JSON-safe, sorted)."""
    return json.loads(json.dumps(report, sort_keys=True, default=str))


def _bundle_hooks() -> list:
    try:
        from edgepipe.delivery.deploy import render_playbook
    except ImportError:
        return []
    return [render_playbook]


def reference_eval_data(model, dataset, report: ReportSettings, source: str):
    """The bundle's eval samples: inputs, labels and FP32 reference outputs of the folded model.

    Bounded whatever the data size: evenly spaced samples, at most `report.eval_limit` of them and
    `report.eval_max_mb` of raw inputs + outputs (what run.py holds and the device stores). The
    samples are streamed into the bundle one at a time; None when there is nothing to keep.
    """
    from edgepipe.delivery.eval_data import EvalSamples
    from edgepipe.data import has_batch_axis
    from edgepipe.sampling import evenly_spaced

    if dataset is None or len(dataset) == 0:
        return None
    session = graph.make_session(model)
    output_names = [o.name for o in model.graph.output]
    first = dataset.sample(0)
    sample_bytes = sum(v.nbytes for v in first.values()) + sum(
        np.asarray(v).nbytes for v in session.run(output_names, first)) + (8 if dataset.labels is not None else 0)
    max_bytes = report.eval_max_mb
    keep = min(len(dataset), report.eval_limit or len(dataset),
               len(dataset) if max_bytes is None else int(float(max_bytes) * 2**20 // sample_bytes))
    info = {"source": source, "available": len(dataset), "bytes_per_sample": int(sample_bytes),
            "max_samples": report.eval_limit, "max_mb": max_bytes}
    if keep < 1:
        return None
    kept = dataset.subset(evenly_spaced(len(dataset), keep))

    def one_row(value) -> np.ndarray:  # one row per sample: a batch axis is the row, others get one
        value = np.asarray(value)  # a zero-size leading dim (an empty Shape slice) is no batch of 0 samples
        return value if has_batch_axis(value.shape) and value.shape[0] != 0 else value[None]

    def rows():
        for i in range(len(kept)):
            feed = kept.sample(i)
            outputs = session.run(output_names, feed)
            label = None if kept.labels is None else int(kept.labels[i])
            yield ({name: one_row(value) for name, value in feed.items()},
                   {name: one_row(value) for name, value in zip(output_names, outputs)}, label)

    return EvalSamples(keep, rows, kept.labels is not None, info)


def eval_summary(prepared: PreparedModel, manifest: dict) -> str:
    """One line for the build output: which samples evaluate the bundle and how many it keeps."""
    entry = manifest.get("eval")
    if not entry:
        if prepared.eval is None:
            return prepared.eval_note
        return (f"{prepared.eval_note}; none kept in the bundle: one sample exceeds report.eval_max_mb "
                "(raise it to keep eval data)")
    return (f"{prepared.eval_note}; the bundle keeps {entry['samples']} of {entry['available']} "
            f"({entry['bytes_per_sample'] / 2**20:.2f} MB each; limits report.eval_limit {entry['max_samples']}, "
            f"report.eval_max_mb {entry['max_mb']})")
