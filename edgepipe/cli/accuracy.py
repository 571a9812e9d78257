"""`edgepipe sensitivity`, `compare` and `finetune`: accuracy diagnosis and recovery from the command line.

Thin like cli/main.py: settings resolve exactly as for `build` (defaults, edgepipe.yaml, options; the
shipped demo when no model is given), the model goes through the same export -> simplify -> fold
stages, then edgepipe.accuracy.sensitivity / edgepipe.accuracy.precision / edgepipe.accuracy.qat do the work.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from edgepipe.errors import UserError, one_line

DEFAULT_TARGET = "desktop-gpu"  # quantizes the variants (its Q/DQ simulation) when no target is given


def _settings(model, weights, target, calib, eval_, input_shapes, input_values, config_path) -> tuple[dict, str]:
    from edgepipe import config, settings

    overrides = {"model": model, "weights": weights, "target": target, "calib": calib, "eval": eval_}
    if input_shapes:
        overrides["input_shapes"] = config.parse_each(input_shapes, "--input-shape")
    if input_values:
        overrides["input_values"] = config.parse_each(input_values, "--input-value")
    path = config_path or (settings.DEFAULT_CONFIG_NAME if Path(settings.DEFAULT_CONFIG_NAME).exists() else None)
    if not target and not (path and config.load_config_file(path).get("target")):
        overrides["target"] = DEFAULT_TARGET
    return settings.resolve_settings(overrides, config_path)


def deployed_model(settings: dict):
    """(folded ONNX model, calib dataset, eval dataset or None) exactly as `build` prepares them."""
    from edgepipe.build import prepare_model
    from edgepipe.pipeline import Pipeline

    pipeline = Pipeline(settings.get("cache_dir"))
    prepared = prepare_model(settings, pipeline)
    for warning in pipeline.warnings:  # an untrusted cache folder or entry: said once, the work is redone
        click.echo(f"warning: {one_line(warning)}", err=True)
    return prepared.model, prepared.calib, prepared.eval


def _calibrate(model, calib_ds, settings: dict):
    from edgepipe.stages.calibrate import run_calibration

    return run_calibration(model, calib_ds, settings["calibration"])


def _inputs(model, weights, calib, eval_, config_path, **more) -> dict:
    """The files a command reads, by option: an output named like one of them is refused."""
    return {"--model": model, "--weights": weights, "--calib": calib, "--eval": eval_, "--config": config_path,
            **more}


def _target(settings: dict):
    """The target whose int8 simulation (`Target.qdq_model`) the accuracy tools measure."""
    from edgepipe.targets import load_target

    return load_target(settings["target"])


_model_options = [
    click.option("--weights", help="state_dict checkpoint for a pkg.module:factory model (weights_only=True)."),
    click.option("--target", help="Target whose int8 is simulated (TensorRT: symmetric, TFLite: asymmetric ranges)."),
    click.option("--calib", help="Calibration data: image folder, .npz, .npy or a folder of .npy/.npz files."),
    click.option("--eval", "eval_", help="Held-out evaluation data (labels give top-1; else argmax agreement)."),
    click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:1x3x224x224"),
    click.option("--input-value", "input_values", multiple=True, metavar="NAME=VALUE",
                 help="Pin an input to a constant first, as build does (repeatable)."),
    click.option("--config", "config_path", type=click.Path(dir_okay=False), help="edgepipe.yaml."),
]


def _with_model_options(func):
    for option in reversed(_model_options):
        func = option(func)
    return func


@click.command("sensitivity")
@click.argument("model", required=False)
@_with_model_options
@click.option("--max-samples", type=click.IntRange(min=1), default=64, show_default=True,
              help="Held-out samples per variant.")
@click.option("--metric", type=click.Choice(["auto", "top1", "agreement", "sqnr"]), default="auto", show_default=True)
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True, help="Rows in the table (0 = all).")
@click.option("--budget", type=float, help="Also plan mixed precision: max accuracy drop vs FP32.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write sensitivity.json here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
def sensitivity_command(model, weights, target, calib, eval_, input_shapes, input_values, config_path, max_samples,
                        metric, top, budget, out_path, as_json):
    """Rank quantized layers by how much INT8 costs (only-this / all-but-this vs FP32)."""
    from edgepipe.output_files import check_output_file
    from edgepipe.safeio import write_text_replacing

    if budget is not None and not 0 <= budget < math.inf:  # before any work; a NaN budget kept every node float
        raise UserError(f"--budget {budget}: give the largest accuracy drop vs FP32 you accept, a number >= 0 "
                        "like 0.01")
    if out_path:
        check_output_file(out_path, "--out", "json", _inputs(model, weights, calib, eval_, config_path))
    from edgepipe.accuracy.precision import plan_on_target
    from edgepipe.accuracy.sensitivity import analyze_sensitivity

    settings, _ = _settings(model, weights, target, calib, eval_, input_shapes, input_values, config_path)
    onnx_model, calib_ds, eval_ds = deployed_model(settings)
    calibration = _calibrate(onnx_model, calib_ds, settings)
    target_plugin = _target(settings)
    dataset = eval_ds or calib_ds
    backend = {k: v for k, v in (settings.get("backend") or {}).items() if v is not None}
    report = analyze_sensitivity(onnx_model, calibration, dataset, target=target_plugin, max_samples=max_samples,
                                 metric=metric, backend=backend)
    data = report.to_json()
    plan = None
    if budget is not None:
        # the planner ranks its own groups (with a target placement: tensors and weights, as `build`)
        plan = plan_on_target(onnx_model, calibration, dataset, budget, target_plugin, settings.get("backend"),
                              metric=metric, max_samples=max_samples)
        data["plan"] = plan.to_json()
    if out_path:
        write_text_replacing(out_path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(f"scheme: {'symmetric' if report.symmetric else 'asymmetric'} ({target_plugin.name}); "
               f"data: {'eval' if eval_ds is not None else 'calibration (no --eval)'} set")
    click.echo(report.text_table(top or None))
    if plan is not None:
        click.echo(f"mixed precision: {one_line(plan.reason)}")
        if plan.float_nodes:
            click.echo("edgepipe.yaml:\n  precision:\n    float_nodes: " + json.dumps(sorted(plan.float_nodes)))


@click.command("compare")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--max-samples", type=int, default=64, show_default=True, help="Eval samples compared tensor by tensor.")
@click.option("--alone/--no-alone", default=True, show_default=True,
              help="Also measure each quantized activation alone (one int8 simulation per tensor).")
@click.option("--alone-samples", type=int, default=32, show_default=True, help="Samples per 'alone' variant.")
@click.option("--top", type=click.IntRange(min=0), default=25, show_default=True, help="Rows in the table (0 = all).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="Write compare.json here (default: BUNDLE/report/compare.json).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
def compare_command(bundle, max_samples, alone, alone_samples, top, out_path, as_json):
    """Deployed int8 model vs FP32, tensor by tensor along the graph (worst first).

    Runs the bundle's deployed model (int8 .tflite in LiteRT; Q/DQ ONNX in ONNX Runtime for TensorRT
    targets: host emulation) and reference.onnx on the bundle's eval data. When the bundle has a
    report (report/results.json), report.html is rendered again with a per-layer chart."""
    from edgepipe.accuracy.compare import COMPARE_FILE, compare_bundle
    from edgepipe.delivery.report import render_report
    from edgepipe.output_files import check_output_file
    from edgepipe.safeio import make_real_folders, write_text_replacing

    if max_samples < 1 or alone_samples < 1:
        raise UserError("compare: --max-samples and --alone-samples must be >= 1")
    if out_path:
        check_output_file(out_path, "--out", "json", {"bundle's results.json": Path(bundle) / "report" / "results.json"})
    out = Path(out_path) if out_path else Path(bundle) / "report" / COMPARE_FILE
    if not out_path and (Path(bundle) / "manifest.json").is_file():
        make_real_folders(out.parent, bundle, COMPARE_FILE)  # before the work, not after it
    report = compare_bundle(bundle, max_samples=max_samples, alone=alone, alone_samples=alone_samples)
    data = report.to_json()
    write_text_replacing(out, json.dumps(data, indent=1, sort_keys=True) + "\n", inside=None if out_path else bundle)
    results = Path(bundle) / "report" / "results.json"
    html = render_report(results, bundle_dir=bundle) if results.is_file() and not out_path else None
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(report.text_table(top or None))
    click.echo(one_line(f"compare.json: {out}" + (f"; report: {html}" if html else "")))


@click.command("finetune")
@click.option("--model", "model", help="pkg.module:factory (or a TorchScript file) of the PyTorch model.")
@_with_model_options
@click.option("--train", "train", required=True, help="Training data in the PyTorch model's input domain.")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Weight of the hard-label loss.")
@click.option("--temperature", type=float, default=4.0, show_default=True, help="Distillation temperature T.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Fine-tuned state_dict (.pt).")
def finetune_command(model, weights, target, calib, eval_, input_shapes, input_values, config_path, train, epochs, lr,
                     alpha, temperature, batch_size, out_path):
    """Quantization-aware fine-tuning with distillation from the FP32 model; writes weights + ranges."""
    import torch

    from edgepipe import graph
    from edgepipe.data import load_dataset
    from edgepipe.accuracy.qat import finetune, float_copy, learned_calibration, prepare_qat, strip_qat
    from edgepipe.accuracy.sensitivity import VariantEvaluator
    from edgepipe.output_files import check_output_file, save_replacing
    from edgepipe.stages.export import is_factory_spec, load_factory

    settings, _ = _settings(model, weights, target, calib, eval_, input_shapes, input_values, config_path)
    spec = str(settings["model"])
    if not is_factory_spec(spec):
        raise UserError(f"--model {spec}: finetune needs a PyTorch pkg.module:factory model (ONNX has no training)")
    if (epochs < 1 or batch_size < 1 or not 0 < lr < math.inf or not 0.0 <= alpha <= 1.0
            or not 0 < temperature < math.inf):  # before any work: --batch-size 0 failed after the export
        raise UserError("finetune: need --epochs >= 1, --batch-size >= 1, --lr > 0, 0 <= --alpha <= 1 and "
                        "--temperature > 0 (finite numbers)")
    reads = _inputs(model, weights, calib, eval_, config_path, **{"--train": train})
    out = check_output_file(out_path, "--out", "torch", reads)
    ranges_path = check_output_file(out.with_suffix(".ranges.json"), "--out's .ranges.json", "json", reads)
    onnx_model, calib_ds, eval_ds = deployed_model(settings)
    calibration = _calibrate(onnx_model, calib_ds, settings)
    target_plugin = _target(settings)
    module = load_factory(spec, settings.get("weights"))
    teacher = float_copy(module)
    specs = {i.name: (tuple(graph.tensor_shape(i)), graph.tensor_dtype(i)) for i in graph.graph_inputs(onnx_model)}
    train_ds = load_dataset(train, specs, settings.get("preprocess"))  # source domain: with mean/std
    prepare_qat(module, calibration, onnx_model=onnx_model)
    module, history = finetune(module, train_ds, epochs=epochs, lr=lr, alpha=alpha, T=temperature, teacher=teacher,
                               batch_size=batch_size, log=lambda m: click.echo(one_line(m), err=True))

    # back through the same pipeline: export the fine-tuned float weights, recalibrate, apply learned ranges
    save_replacing(lambda temporary: torch.save(float_copy(module).state_dict(), temporary), out)
    tuned = {**settings, "weights": str(out)}
    tuned_model, _, _ = deployed_model(tuned)
    tuned_calibration = learned_calibration(module, tuned_model, base=_calibrate(tuned_model, calib_ds, settings))
    strip_qat(module)
    save_replacing(tuned_calibration.save, ranges_path)
    dataset = eval_ds or calib_ds
    before = VariantEvaluator(onnx_model, calibration, dataset, target=target_plugin, max_samples=None).evaluate(set())
    after = VariantEvaluator(tuned_model, tuned_calibration, dataset, target=target_plugin,
                             max_samples=None).evaluate(set())
    metric = "top1" if before.top1 is not None else "argmax_agreement"
    click.echo(f"INT8 {metric}: PTQ {getattr(before, metric):.4f} -> QAT {getattr(after, metric):.4f} "
               f"(FP32 {before.fp32_top1 if before.fp32_top1 is not None else 1.0:.4f}); "
               f"SQNR {before.sqnr_db:.1f} -> {after.sqnr_db:.1f} dB; final loss {history[-1]['loss']:.4f}")
    click.echo(f"weights: {one_line(out)}\nranges: {one_line(ranges_path)}")


def register(group: click.Group) -> None:
    group.add_command(sensitivity_command)
    group.add_command(compare_command)
    group.add_command(finetune_command)
