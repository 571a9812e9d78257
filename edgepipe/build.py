"""`edgepipe build`: export → simplify → fold → calibrate → backend → bundle → (host) report.

Follow one model from here to the bundle, stage by stage; settings come resolved from
edgepipe/settings.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepipe import __version__, graph
from edgepipe.bundle import check_out_dir
from edgepipe.outdir import BACKEND_TMP_PREFIX
from edgepipe.safeio import JSON_MAX_BYTES, ensure_regular_file, ensure_regular_or_dir
from edgepipe.errors import UnsupportedOpError, UserError
from edgepipe.modelcheck import check_model
from edgepipe.pipeline import Pipeline, bytes_hash, settings_hash
from edgepipe.settings import (data_fingerprint, data_preprocess, fold_settings_of, initial_input_shapes,
                               require_calib, to_model_domain)



@dataclass
class BuildResult:
    target: str
    out: Path
    stages: list[dict]
    manifest: dict
    warnings: list[str] = field(default_factory=list)
    results: dict | None = None  # host results.json when the target ran on this host
    report_html: Path | None = None

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


def prepare_model(settings: dict, pipeline: Pipeline, target=None) -> PreparedModel:
    """Stages 1-3: export, simplify, fold (each cached), plus the calibration and eval datasets.

    When a target is given, its unsupported ops are reported right after simplify: before fold
    runs the graph and before any output file exists.
    """
    from edgepipe.data import load_dataset
    from edgepipe.stages.export import run_export, source_fingerprint
    from edgepipe.stages.fold import run_fold
    from edgepipe.stages.simplify import run_simplify

    warnings: list[str] = []
    if target is not None and not settings.get("calib"):
        check_structure(settings["model"], target)  # before "no calibration data" for a model that can never build
    # 1. export: never cached. What a factory exports depends on every module it imports, so only
    # the exported graph itself is a trustworthy key; the later stages are keyed by its bytes.
    shapes = initial_input_shapes(settings)
    source_hash = source_fingerprint(settings["model"], settings.get("weights"))
    output_names = settings.get("output_names")
    model, _ = pipeline.model_stage(
        "export", None,
        lambda: (run_export(settings["model"], settings.get("weights"), shapes, settings["opset"], output_names), {}),
    )

    check_model(model, str(settings["model"]))  # no inputs, allocation bombs

    # 2. simplify
    model, simplify_report = pipeline.model_stage(
        "simplify", settings_hash(stage="simplify", model=pipeline.last_hash), lambda: run_simplify(model)
    )
    if simplify_report.get("status") == "failed":
        warnings.append(f"simplify: {simplify_report.get('note')}")

    fold_settings = fold_settings_of(settings)
    if target is not None:  # ops the fold stage rewrites are checked after it
        check_target_support(model, target, ignore={"BatchNormalization"} if fold_settings.get("batchnorm", True) else set())

    # data for the deployed (folded) model
    specs = {i.name: (tuple(graph.tensor_shape(i)), graph.tensor_dtype(i)) for i in graph.graph_inputs(model)}
    preprocess = data_preprocess(settings)
    calib_ds = to_model_domain(
        load_dataset(require_calib(settings), specs, preprocess, limit=settings["calibration"].get("max_samples")),
        settings)
    eval_ds = None
    if settings.get("eval"):
        eval_ds = to_model_domain(
            load_dataset(settings["eval"], specs, preprocess, limit=settings["report"].get("eval_limit")), settings)

    # 3. fold
    needs_eval = str(fold_settings.get("temperature", "none")) == "auto"
    fold_key = settings_hash(
        stage="fold", model=pipeline.last_hash, settings=fold_settings,
        calib=data_fingerprint(settings["calib"]) if fold_settings["input_normalization"] in ("zca", "pca") else "",
        eval=data_fingerprint(settings.get("eval")) if needs_eval else "",
    )
    model, fold_report = pipeline.model_stage(
        "fold", fold_key, lambda: run_fold(model, fold_settings, calib_ds, eval_ds)
    )
    if target is not None:
        check_target_support(model, target)
    return PreparedModel(model, calib_ds, eval_ds, source_hash, simplify_report, fold_report, warnings)


def check_structure(source: str, target) -> None:
    """UnsupportedOpError for the first node of an .onnx file that no simplification can take out of
    the target's way, control flow or a custom domain: such a model is refused for what it is,
    not asked for the calibration data it could never use."""
    from edgepipe.backends.support import CONTROL_FLOW, canonical_domain, operator_problem, opsets, qualified, walk_nodes

    if not (str(source).endswith(".onnx") and Path(source).is_file()):
        return
    model = graph.load_model(source, load_external=False)
    table, versions = target.operators(), opsets(model)
    for name, node, _ in walk_nodes(model):
        domain = canonical_domain(node.domain)
        if (domain == "" and node.op_type in CONTROL_FLOW) or domain not in table.domains():
            reason = operator_problem(node, versions, table, target.name)
            raise UnsupportedOpError(name, qualified(node.domain, node.op_type), target.name, reason)


def check_target_support(model, target, ignore: set[str] = frozenset()) -> None:
    """UnsupportedOpError naming the first node the target cannot run (before any file is written)."""
    unsupported = [entry for entry in target.supports(model) if entry[1] not in ignore]
    if unsupported:
        node, op_type, reason = unsupported[0]
        more = f" (and {len(unsupported) - 1} more; run `edgepipe inspect`)" if len(unsupported) > 1 else ""
        raise UnsupportedOpError(node, op_type, target.name, f"{reason}{more}")


def run_build(settings: dict, origin: str = "config", log=None, progress_factory=None) -> BuildResult:
    from edgepipe.calibrate.result import CalibrationResult
    from edgepipe.stages.calibrate import run_calibration
    from edgepipe.targets import load_target

    log = log or (lambda message: None)
    backend_settings = {k: v for k, v in (settings.get("backend") or {}).items() if v is not None}
    target = load_target(settings["target"], {k: v for k, v in backend_settings.items() if k == "threads"})
    target.check_backend_settings(backend_settings)
    check_out_dir(Path(settings["out"]))  # before any work: a wrong --out costs nothing and loses nothing
    for key in ("model", "weights", "calib", "eval"):  # a FIFO or device would block a reader forever
        if settings.get(key):
            ensure_regular_or_dir(settings[key], f"--{key}")
    pipeline = Pipeline(settings.get("cache_dir"), log)
    prepared = prepare_model(settings, pipeline, target)
    model, calib_ds, eval_ds = prepared.model, prepared.calib, prepared.eval
    warnings = list(prepared.warnings)

    # 4. calibrate
    calib_settings = dict(settings["calibration"])
    calib_key = settings_hash(stage="calibrate", model=pipeline.last_hash,  # the fold stage's artifact
                              data=data_fingerprint(settings["calib"]), settings=calib_settings,
                              preprocess=data_preprocess(settings))
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
        lambda: run_calibration(model, calib_ds, calib_settings, progress=progress),
        save=lambda result, d: result.save(d / "calibration.json"),
        load=lambda d: CalibrationResult.load(d / "calibration.json"),
        describe=lambda r: (f"calibration.json ({len(r.tensors)} tensors)", len(json.dumps(r.to_json())),
                            bytes_hash(json.dumps(r.to_json(), sort_keys=True).encode())),
        note=lambda r: f"{len(r.warnings)} warning(s)" if r.warnings else "",
    )
    warnings.extend(f"calibration: {w}" for w in calibration.warnings)

    # 4b. automatic mixed precision to an accuracy budget (sensitivity-ranked float islands)
    float_nodes = set(settings["precision"].get("float_nodes") or [])
    extra_files: dict[str, bytes] = {}
    if settings["precision"].get("budget") is not None:
        plan = pipeline.run(
            "precision", lambda: plan_precision(model, calibration, eval_ds or calib_ds, settings, target),
            describe=lambda p: (f"precision.json ({len(p.float_nodes)} float nodes)", 0, ""),
            note=lambda p: "budget met" if p.met else "budget NOT met",
        )
        float_nodes |= set(plan.float_nodes)
        if not plan.met:
            warnings.append(f"precision: {plan.reason}")
        extra_files["precision.json"] = _json_bytes(plan.to_json())
        if plan.sensitivity is not None:
            extra_files["sensitivity.json"] = _json_bytes(plan.sensitivity.to_json())

    out = Path(settings["out"])
    try:
        manifest = write_outputs(out, settings, target, pipeline, prepared, calibration, float_nodes, extra_files,
                                 backend_settings, origin)
    except OSError as exc:  # disk full, permission denied, file size limit: the user's machine
        raise UserError(f"{out}: cannot write the bundle ({exc.strerror or exc}); the previous bundle is "
                        "unchanged - free disk space or fix permissions and rebuild") from exc

    result = BuildResult(target.name, out, pipeline.summary(), manifest, warnings)
    # 7. report on this host (targets whose runtime runs here)
    if target.host_report and settings["report"].get("host", True):
        pipeline.run(
            "report", lambda: run_host_report(out, settings, target, result),
            describe=lambda r: ("report/report.html", (out / "report" / "report.html").stat().st_size
                                if (out / "report" / "report.html").exists() else 0, ""),
        )
        result.stages = pipeline.summary()
    return result


def write_outputs(out: Path, settings: dict, target, pipeline: Pipeline, prepared: PreparedModel, calibration,
                  float_nodes: set, extra_files: dict, backend_settings: dict, origin: str) -> dict:
    """Stages 5-6: lower with the target's backend into a temp dir, then write the bundle atomically."""
    from edgepipe.bundle import write_bundle

    model, calib_ds, eval_ds = prepared.model, prepared.calib, prepared.eval
    with tempfile.TemporaryDirectory(prefix=f"{BACKEND_TMP_PREFIX}{os.getpid()}-") as backend_tmp:
        backend_dir = Path(backend_tmp)
        # 5. backend
        backend_options = {**backend_settings, "float_nodes": sorted(float_nodes)}
        backend = pipeline.run(
            "backend", lambda: target.build_backend(model, calibration, backend_dir, backend_options),
            describe=lambda r: (", ".join(r.files), sum((backend_dir / f).stat().st_size for f in r.files),
                                _files_hash(backend_dir, r.files)),
        )
        # 6. bundle
        eval_data = reference_eval_data(model, eval_ds or calib_ds, with_labels=eval_ds is not None)
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
                                "simplify": prepared.simplify_report, "edgepipe_version": __version__},
                eval_data=eval_data,
                hooks=_bundle_hooks(),
                template_packages=target.template_packages(),
            ),
            describe=lambda m: (f"{out} ({len(m.get('files', []))} files)",
                                sum(f.get("size", 0) for f in m.get("files", [])),
                                bytes_hash(json.dumps(m.get("files", []), sort_keys=True).encode())),
        )
    return manifest


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
    """Greedy mixed precision to `precision.budget` (see edgepipe/precision.py)."""
    from edgepipe.precision import plan_on_target

    return plan_on_target(model, calibration, dataset, settings["precision"]["budget"], target,
                          settings.get("backend"))


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
        from edgepipe.deploy import render_playbook
    except ImportError:
        return []
    return [render_playbook]


def reference_eval_data(model, dataset, with_labels: bool) -> dict:
    """Eval inputs, labels and the FP32 reference outputs of the folded model."""
    from edgepipe.data import has_batch_axis

    session = graph.make_session(model)
    output_names = [o.name for o in model.graph.output]
    inputs = {name: dataset.stack(name) for name in dataset.names}
    references: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
    for i in range(len(dataset)):
        outputs = session.run(output_names, dataset.sample(i))
        for name, value in zip(output_names, outputs):
            references[name].append(np.asarray(value))
    # one row per sample: outputs with a batch axis are joined on it, others stacked
    reference = {name: (np.concatenate if has_batch_axis(values[0].shape) else np.stack)(values)
                 for name, values in references.items()}
    labels = dataset.labels if with_labels and dataset.labels is not None else None
    return {"inputs": inputs, "labels": labels, "reference": reference}


def run_host_report(out: Path, settings: dict, target, result: BuildResult) -> dict:
    """Run the bundle's own run.py with this Python (marked 'host'), then render the report."""
    from edgepipe.regress import load_results
    from edgepipe.report import render_report

    threads = settings["backend"].get("threads") or target.options.get("threads") or 2
    out = out.resolve()
    command = [sys.executable, str(out / "run.py"), "--where", "host",
               "--iterations", str(settings["report"]["iterations"]),
               "--warmup", str(settings["report"]["warmup"]), "--threads", str(threads)]
    completed = subprocess.run(command, cwd=str(out), capture_output=True, text=True)
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{out / 'run.py'} failed on this host: {last}")
    results_path = out / "report" / "results.json"
    results = load_results(results_path, "host")
    html = render_report(results_path, out_dir=out / "report", bundle_dir=out)
    result.results = results
    result.report_html = Path(html) if html else None
    return results

