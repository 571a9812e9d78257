"""The `edgepipe` command line. Thin: parse options, call the library, print.

Error contract (release checks rely on it): a `UserError` prints one line `error: ...` on
stderr and exits 2 with no traceback (unless --debug); a broken budget exits 1; anything else is
a bug in edgepipe: one line `error: internal error in <stage>: <type>: <message> (rerun with
--debug)`, exit 3, and the traceback only with --debug or EDGEPIPE_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter

import click

from edgepipe import __version__, isolation
from edgepipe.calibrate import methods as calibration_methods
from edgepipe.errors import BudgetError, UserError, inert_text, one_line

DEBUG_ENV = "EDGEPIPE_DEBUG"
INTERNAL_ERROR_EXIT = 3


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV) == "1"


class TtyProgress:
    """A one-line progress bar on a TTY; silent otherwise (logs and CI stay clean)."""

    def __init__(self, label: str, total: int):
        self.label, self.total = label, max(int(total), 1)
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        total = total or self.total
        width = 30
        filled = int(width * min(done, total) / max(total, 1))
        stream = getattr(sys.stderr, "raw", sys.stderr)  # the one writer of "\r": its label is ours
        stream.write(f"\r{inert_text(self.label):<12} [{'#' * filled}{'.' * (width - filled)}] {int(done)}/{int(total)}")
        if done >= total:
            stream.write("\n")
        stream.flush()


def _log(quiet: bool):
    """Stage progress on a terminal only: piped stderr carries nothing but warnings and errors."""
    show = not quiet and sys.stderr.isatty()

    def log(message: str) -> None:
        if show:
            click.echo(one_line(message), err=True)

    return log


class ReaderEOF(Exception):
    """An EOFError that reached the CLI (a reader met a cut gzip, zip or pickle stream and did not
    name the file): carried past click, which reports any EOFError as "aborted" (exit 130), as if
    the user had pressed Ctrl-D."""


class EdgepipeGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EOFError as exc:
            raise ReaderEOF() from exc


@click.group(cls=EdgepipeGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgepipe")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """edgepipe: PyTorch/ONNX model -> calibrated INT8 bundle for Jetson, desktop GPUs and ARM CPUs."""


@cli.command()
@click.option("--model", help="An .onnx file, a TorchScript/torch.export file, or pkg.module:factory. Default: the shipped demo.")
@click.option("--weights", help="state_dict checkpoint for a module:factory model (loaded with weights_only=True).")
@click.option("--target", help="Target plugin or profile (see `edgepipe targets`).")
@click.option("--calib", help="Calibration data: image folder, .npz (keys = input names), .npy or a folder of .npy/.npz files.")
@click.option("--eval", "eval_", help="Evaluation data (labels optional): image folder, .npz, .npy or a folder of .npy/.npz files.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:1x3x224x224", help="Fix an input's static shape (repeatable).")
@click.option("--input-value", "input_values", multiple=True, metavar="NAME=VALUE",
              help="Pin an input to a constant, e.g. sr=16000: an If it decides keeps one branch (repeatable).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="edgepipe.yaml (default: ./edgepipe.yaml if present).")
@click.option("--out", help="Bundle directory (default build/<target>; build/<file stem> for a profile .yaml path).")
@click.option("--calib-method", type=click.Choice(calibration_methods.names()), help="Calibration method for all tensors.")
@click.option("--int8-io", is_flag=True, default=None, help="TFLite: int8 model inputs/outputs.")
@click.option("--keep-layout", is_flag=True, default=None, help="TFLite: keep NCHW inputs (default converts images to NHWC).")
@click.option("--no-host-report", is_flag=True, default=False, help="Do not measure int8 vs FP32 on this host after the build.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary instead of the table.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def build(model, weights, target, calib, eval_, input_shapes, input_values, config_path, out, calib_method, int8_io,
          keep_layout, no_host_report, as_json, debug):
    """Build a deployment bundle: export, simplify, fold, calibrate, lower, bundle, report."""
    from edgepipe import config as cfg
    from edgepipe.build import run_build
    from edgepipe.settings import resolve_settings

    overrides: dict = {"model": model, "weights": weights, "target": target, "calib": calib, "eval": eval_, "out": out}
    if input_shapes:
        overrides["input_shapes"] = cfg.parse_each(input_shapes, "--input-shape")
    if input_values:
        overrides["input_values"] = cfg.parse_each(input_values, "--input-value")
    if calib_method:
        overrides["calibration"] = {"method": calib_method}
    backend = {"int8_io": int8_io, "keep_layout": keep_layout}
    overrides["backend"] = {k: v for k, v in backend.items() if v is not None}
    if no_host_report:
        overrides["report"] = {"host": False}
    settings, origin = resolve_settings(overrides, config_path)
    log = _log(as_json)
    if origin == "demo":
        log("No --model given and no edgepipe.yaml here: building the shipped demo model.")
    result = run_build(settings, origin, log=log, progress_factory=TtyProgress)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True, default=str))
        return
    _print_summary(result)


def _print_summary(result) -> None:
    rows = [("stage", "time", "artifact", "size", "")]
    for stage in result.stages:
        note = "cached" if stage["cached"] else ""
        if stage.get("note"):
            note = f"{note} {stage['note']}".strip()
        # size 0: the stage updates another stage's file (bias corrections, a precision plan), no file of its own
        size = _human(stage["size"]) if stage["size"] else "-"
        rows.append((stage["name"], f"{stage['seconds']:.2f}s", stage["artifact"], size, note))
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    for row in rows:
        click.echo(one_line("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[4]))
    for warning in result.warnings:
        click.echo(f"warning: {one_line(warning)}", err=True)
    if result.eval_note:
        click.echo(f"evaluation data: {one_line(result.eval_note)}")
    if result.results:
        acc = result.results.get("accuracy", {})
        lat = result.results.get("latency_ms", {})
        acc = acc or {}
        parts = [f"{k} {acc[k]:.4f}" for k in ("top1", "fp32_top1", "argmax_agreement") if isinstance(acc.get(k), (int, float))]
        sqnr = [e.get("sqnr_db") for e in (acc.get("outputs") or {}).values() if isinstance(e, dict)]
        if any(isinstance(v, (int, float)) for v in sqnr):
            parts.append(f"output SQNR {min(v for v in sqnr if isinstance(v, (int, float))):.1f} dB")
        if lat:
            parts.append(f"p50 {lat.get('p50', 0):.3f} ms (host, not device)")
        if result.results.get("speedup"):
            parts.append(f"speed-up vs {result.results['compare']['model']} {result.results['speedup']:.2f}x")
        if (result.results.get("delegation") or {}).get("partitions") is not None:
            parts.append(f"XNNPACK partitions {result.results['delegation']['partitions']}")
        click.echo(one_line(f"host report ({result.results.get('where', 'host')}): " + ", ".join(parts)))
    if result.report_html:
        click.echo(f"report: {one_line(result.report_html)}")
    click.echo(f"bundle: {one_line(result.out)}")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


@cli.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list.")
def targets_command(as_json: bool):
    """List installed target plugins and profiles."""
    from edgepipe.targets import loadable_targets

    loaded, problems = loadable_targets()
    for problem in problems:  # a broken plugin is named; the others are still listed
        click.echo(one_line(f"warning: {problem}"), err=True)
    described = [target.describe() for target in loaded]
    if as_json:
        click.echo(json.dumps(described, indent=2, sort_keys=True))
        return
    for t in described:
        origin = f" (profile {t['profile']})" if t.get("profile") else ""
        click.echo(one_line(f"{t['name']:<14} {t['backend']:<9} {t['description']}{origin}"))
        click.echo(f"{'':<14} precision: {t['precision']}; layout {t['layout']}; options {t['options']}")
        click.echo(f"{'':<14} verified here: {t['verified_here']}")


@cli.command()
@click.argument("model_path", metavar="MODEL")
@click.option("--target", "target_names", multiple=True, help="Only these targets (default: all installed).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:1x3x224x224",
              help="Fix a dynamic input's shape first, as build does (repeatable).")
@click.option("--input-value", "input_values", multiple=True, metavar="NAME=VALUE",
              help="Pin an input to a constant first, as build does (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(model_path: str, target_names: tuple[str, ...], input_shapes: tuple[str, ...],
            input_values: tuple[str, ...], as_json: bool):
    """Inputs, outputs, op histogram and unsupported ops per target of an ONNX model."""
    from edgepipe import branches, dequantize, graph, loops, ml_ops
    from edgepipe import config as cfg
    from edgepipe.backends.support import qualified, walk_nodes
    from edgepipe.stages import float16
    from edgepipe.stages.export import fix_static_shapes
    from edgepipe.targets import load_target, loadable_targets

    model, _ = dequantize.float_from_quantized(graph.load_model(model_path))  # as export does
    model, _ = ml_ops.standard_from_ml(model)
    pinned = cfg.parse_each(input_values, "--input-value")
    model = branches.pin_inputs(model, pinned, model_path)
    if input_shapes:
        flagged = cfg.parse_each(input_shapes, "--input-shape")
        model = fix_static_shapes(model, flagged, model_path, flagged)
    model, _ = float16.to_float32(model)  # a float16 model is computed in float32 by every build
    static = bool(graph.graph_inputs(model)) and all(graph.is_static(graph.declared_shape(i))
                                                     for i in graph.graph_inputs(model))
    if static:
        from edgepipe.modelcheck import check_model
        from edgepipe.stages.fold import run_fold

        check_model(model, model_path)  # as build does before fold runs the graph: no allocation bombs
        from edgepipe.stages.simplify import new_custom_ops, run_simplify

        # the graph a build lowers: static, Ifs folded, simplified, BatchNorm folded (no data needed for that);
        # onnxsim's fusions into a custom-domain op (com.microsoft::Attention) are not kept, as build does not
        model = graph.refresh_shapes(branches.fold_constant_ifs(graph.refresh_shapes(model), pinned))
        simplified = run_simplify(model)[0]
        if new_custom_ops(model, simplified):
            simplified = run_simplify(model, fuse=False)[0]
        model, _ = run_fold(simplified, {})
    model = graph.ensure_node_names(graph.infer_shapes(model))
    io = graph.describe_io(model)
    histogram = dict(sorted(Counter(qualified(n.domain, n.op_type) for _, n, _ in walk_nodes(model)).items()))
    unsupported, delegation = {}, {}
    if target_names:
        chosen = [load_target(name) for name in target_names]
    else:  # all installed: a broken third-party plugin is named, not fatal
        chosen, problems = loadable_targets()
        for problem in problems:
            click.echo(one_line(f"warning: {problem}"), err=True)
    for target in chosen:
        checked = loops.unroll_for(model, target) if static else model  # as build prepares it for this target
        if checked is not model:  # build unrolls before simplify: the unrolled steps' Shape ops fold there
            checked = run_fold(run_simplify(checked)[0], {})[0]
        unsupported[target.name] = [{"node": n, "op_type": o, "reason": r} for n, o, r in target.supports(checked)]
        if not unsupported[target.name] and static:
            try:
                predicted = target.predict_delegation(checked)
            except UserError:  # a shape the lowering needs is unknown: no prediction, build says why
                predicted = None
            if predicted is not None:
                delegation[target.name] = predicted
    info = {"model": model_path, "opset": graph.opset_version(model), "nodes": len(model.graph.node),
            "inputs": io["inputs"], "outputs": io["outputs"], "op_histogram": histogram, "unsupported": unsupported,
            "delegation": delegation}
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True, default=str))
        return
    click.echo(f"{one_line(model_path)}: opset {info['opset']}, {info['nodes']} nodes")
    for kind in ("inputs", "outputs"):
        for item in info[kind]:
            click.echo(f"  {kind[:-1]:<6} {one_line(item['name'])}  {item['dtype']}  {item['shape']}")
    click.echo("  ops: " + ", ".join(f"{one_line(op)} x{count}" for op, count in histogram.items()))
    dynamic = [i["name"] for i in info["inputs"] if not graph.is_static(i["shape"])]
    if dynamic:
        click.echo(one_line(f"  note: input(s) {', '.join(dynamic)} have dynamic dims; pass --input-shape "
                            f"{dynamic[0]}:1x... to check the static graph a build lowers"))
    for target, nodes in unsupported.items():
        if not nodes:
            click.echo(f"  {target}: all ops supported")
            if target in delegation:
                click.echo(f"  {target}: {_delegation_line(delegation[target])}")
            continue
        click.echo(f"  {target}: {len(nodes)} unsupported node(s)")
        for item in nodes[:20]:
            click.echo(one_line(f"    {item['node']} ({item['op_type']}): {item['reason']}"))


def _delegation_line(predicted: dict) -> str:
    outside = ", ".join(f"{op} x{count}" for op, count in predicted["outside"].items())
    line = (f"int8 ops predicted outside XNNPACK: {outside}" if outside
            else "every int8 op predicted inside XNNPACK (one partition)")
    if predicted["unmeasured"]:
        line += f" (not measured: {', '.join(predicted['unmeasured'])})"
    return line


def _register_plugins() -> None:
    """Commands that live in their own modules (bundle tools, deploy, accuracy recovery)."""
    import importlib

    for module_name in ("edgepipe.cli.release", "edgepipe.cli.deploy", "edgepipe.cli.accuracy"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(cli)


_register_plugins()


class InertStream:
    """stdout / stderr with terminal controls escaped in everything written as text."""

    def __init__(self, stream):
        self._stream = stream
        self.raw = stream  # for the progress bar only

    def write(self, text):
        return self._stream.write(inert_text(text) if isinstance(text, str) else text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> None:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = InertStream(sys.stdout), InertStream(sys.stderr)
    try:
        _main(argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    isolation.strip_cwd_from_sys_path()  # a torch.py or onnxsim.py in the current folder is never imported
    isolation.clean_up_on_sigterm()
    try:
        cli.main(args=argv, prog_name="edgepipe", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except ReaderEOF as exc:  # a bug: the reader should have named the file
        if debug:
            raise exc.__cause__ from None
        click.echo(internal_error_line(exc.__cause__, _command_name(argv)), err=True)
        sys.exit(INTERNAL_ERROR_EXIT)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(UserError.exit_code)
    except BudgetError as exc:
        if debug:
            raise
        if str(exc):
            click.echo(f"FAILED: {one_line(exc)}", err=True)
        sys.exit(BudgetError.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except MemoryError:
        if debug:
            raise
        click.echo("error: out of memory; try fewer calibration samples (calibration.max_samples)", err=True)
        sys.exit(2)
    except OSError as exc:
        if debug:
            raise
        # disk full, permission denied, ...: the user's environment, not our bug
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        click.echo(f"error: {one_line(exc.strerror or exc)}{one_line(where)}", err=True)
        sys.exit(2)
    except Exception as exc:  # a bug in edgepipe: one line, the traceback only on request
        if debug:
            raise
        out_of_memory = runtime_out_of_memory_line(exc)
        if out_of_memory:
            click.echo(out_of_memory, err=True)
            sys.exit(UserError.exit_code)
        click.echo(internal_error_line(exc, _command_name(argv)), err=True)
        sys.exit(INTERNAL_ERROR_EXIT)
    sys.exit(0)


_RUNTIME_NODE = re.compile(r"running (\S+) node\. Name:'(.*?)' Status Message")


def runtime_out_of_memory_line(exc: BaseException) -> str | None:
    """ONNX Runtime failing to allocate a tensor while it runs the model (a Range or Expand sized by
    the model's constants, which shape inference cannot bound before the run): the user's model,
    not an edgepipe bug. None for any other exception."""
    text = str(exc)
    if not type(exc).__module__.startswith("onnxruntime") or "Failed to allocate memory" not in text:
        return None
    found = _RUNTIME_NODE.search(text)
    where = f" running node '{found.group(2)}' ({found.group(1)})" if found else ""
    size = re.search(r"buffer of size (\d+)", text)
    asked = f" ({size.group(1)} bytes)" if size else ""
    return one_line(f"error: ONNX Runtime could not allocate a tensor{asked}{where}: the model computes more data "
                    "than this machine's memory holds; check the shapes the model computes")


def internal_error_line(exc: BaseException, command: str) -> str:
    """`error: internal error in <stage>: <type>: <message> (rerun with --debug)`, one line.

    The stage is the pipeline stage that raised (`Pipeline` tags the exception), else the command."""
    from edgepipe.pipeline import stage_of

    lines = str(exc).strip().splitlines()
    message = f": {' '.join(lines[0].split())[:300]}" if lines else ""
    return (f"error: internal error in {stage_of(exc) or command}: {type(exc).__name__}{message} "
            "(rerun with --debug)")


def _command_name(argv: list[str]) -> str:
    return next((arg for arg in argv if not arg.startswith("-")), "edgepipe")


if __name__ == "__main__":
    main()
