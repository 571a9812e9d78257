"""The `edgepipe.yaml` schema: every CLI option can live in the file, validated up front.

The schema is data (a nested dict of `Field`s), so the README's config reference, the error
messages ("unknown key 'calibraton'; allowed: ...") and the defaults all come from one place.
Files are read with a SafeLoader that refuses aliases, size and nesting bounded (edgepipe/safeio.py).
Numbers carry their allowed range, so `report.iterations: 0` or `backend.workspace_mb: -1` fail
before any work starts, not after the previous bundle was replaced.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe import quantmath
from edgepipe.calibrate import methods as calibration_methods
from edgepipe.errors import UserError
from edgepipe.safeio import CONFIG_MAX_BYTES, read_yaml_file

CALIBRATION_METHODS = calibration_methods.names()  # the registry in edgepipe/calibrate/methods/
NORMALIZATION_MODES = ("none", "mean_std", "zca", "pca")


@dataclass(frozen=True)
class Field:
    types: tuple  # accepted Python types (after YAML parsing)
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    minimum: float | None = None  # numbers below are refused (bounds are inclusive)
    maximum: float | None = None  # numbers above are refused: sizes a hostile config could blow up


def _section(**fields: Field) -> dict[str, Field]:
    return fields


SCHEMA: dict[str, Any] = {
    "model": Field((str,), None, "an .onnx file, a TorchScript / torch.export file, or pkg.module:factory"),
    "weights": Field((str,), None, "checkpoint for module:factory models (state_dict, loaded with weights_only=True)"),
    "target": Field((str,), None, "target plugin name (see `edgepipe targets`)"),
    "calib": Field((str,), None, "calibration data: image folder, .npz, .npy, .wav or a folder of .npy/.npz or .wav files"),
    "eval": Field((str,), None, "evaluation data (labels optional): image folder, .npz, .npy, .wav or a folder of .npy/.npz or .wav files"),
    "input_shapes": Field((dict,), {}, "static input shapes, {name: [1, 3, 224, 224]}"),
    "input_values": Field((dict,), {}, "inputs fixed to a value in deployment, {name: value} (a sample rate, a mode "
                          "flag): each becomes a constant before simplify, and an If it decides keeps one branch"),
    "output_names": Field((list,), None, "names for a PyTorch model's outputs (default: output, output_1, ...)"),
    "out": Field((str,), None, "bundle directory (default build/<target>)"),
    "cache_dir": Field((str,), "build/.cache", "stage cache (simplify/fold/calibrate outputs, keyed by the exported graph)"),
    "opset": Field((int,), 17, "ONNX opset for PyTorch export", minimum=7),
    "preprocess": _section(
        size=Field((list,), None, "[H, W]: resize the shorter side and center-crop to this size"),
        scale=Field((int, float), None, "pixel multiplier before mean/std (default: 1/255 for a float input, 1 for "
                    "an integer one)", minimum=0),
        mean=Field((list,), None, "per-channel mean (after scale)"),
        std=Field((list,), None, "per-channel std (after scale)"),
        channel_order=Field((str,), "RGB", "", ("RGB", "BGR")),
        layout=Field((str,), None, "default: NHWC when the input's last dim is 1 or 3 and dim 1 is not, else NCHW",
                     ("NCHW", "NHWC")),
        grayscale=Field((bool,), None, "convert images to one channel (default: when the input has one channel)"),
        sample_rate=Field((int,), None, ".wav data: every file must be sampled at this rate in Hz (default: the first "
                          "file's rate; rates are not converted)", minimum=1),
        audio_scale=Field((str,), "unit", ".wav data: unit = samples in [-1, 1) (soundfile/librosa/torchaudio), int16 "
                          "= in 16-bit integer units (models fed raw PCM values)", ("unit", "int16")),
    ),
    "fold": _section(
        batchnorm=Field((bool,), True, "fold BatchNormalization into the preceding Conv/Gemm"),
        constant_affine=Field((bool,), None, "fold chains of constant Mul/Add/Sub/Div on a 4-D tensor into the Conv "
                              "that writes their input or (where exact: a shift only without padding) the Conv that "
                              "alone reads their result, or a pure per-channel scale into a MatMul by a constant "
                              "matrix whose product a Transpose brings to NCHW (layer scale); exact in float. Unset: "
                              "the target's default (arm-cpu true, other targets false)"),
        cross_layer_equalization=Field((bool, str), None, "rescale the channels between two convolutions, exact in "
                                       "float: true: every pair (directly or through a Relu; the second group-1 or "
                                       "depthwise); depthwise: only a Conv feeding a depthwise Conv. A depthwise pair "
                                       "equalizes the tensor's per-channel ranges measured on calibration samples, a "
                                       "group-1 pair the weight ranges. Unset: the target's default (arm-cpu "
                                       "depthwise, other targets false)", (False, True, "depthwise")),
        split_before_concat=Field((bool,), True, "move a Split in front of the Concat (and Reshape) that built its "
                                  "input (a detector head's box/class split): each piece keeps its own int8 grid; "
                                  "exact in float"),
        input_normalization=Field((str,), "none", "fold mean/std or a ZCA/PCA whitening of the input into the first conv", NORMALIZATION_MODES),
        mean=Field((list,), None, "input mean for mean_std (default: preprocess.mean)"),
        std=Field((list,), None, "input std for mean_std (default: preprocess.std)"),
        temperature=Field((str, int, float), "none", "none | auto (fit on the eval set) | a float"),
        eps=Field((int, float), 1e-5, "eigenvalue floor for whitening", minimum=0),
    ),
    "calibration": _section(
        method=Field((str,), "auto", "range selection", CALIBRATION_METHODS),
        percentile=Field((int, float), 99.99, "percentile for method=percentile", minimum=0),
        num_bins=Field((int,), 2048, "histogram bins per tensor", minimum=8, maximum=1 << 16),
        overrides=Field((dict,), {}, "{tensor name or op type: method}"),
        rounds=Field((int,), 4, "rounds for the stability check", minimum=1),
        max_samples=Field((int,), None, "use at most this many calibration samples", minimum=1),
        batch_size=Field((int,), 1, "calibration batch size (models with a static batch of 1 use 1)", minimum=1),
        ranges=Field((str,), None, "use these ranges instead of calibrating (e.g. `edgepipe finetune`'s .ranges.json)"),
        weight_ranges=Field((str,), "minmax", "per-channel weight thresholds: minmax (each output channel's largest absolute weight) "
                            "or mse (the fraction of it, down to half, with the lowest int8 weight error)",
                            quantmath.WEIGHT_RANGES),
        bias_correction=Field((bool, str), "auto", "shift each Conv/Gemm/MatMul bias by the per-channel mean error "
                              "the target's int8 adds on calibration data (int8 files only; recorded in "
                              "calibration.json). auto: with 32 or more calibration samples, estimated on those not held "
                              "out (every other one, at most 32, is) and kept only when the target's int8 outputs (.tflite in "
                              "LiteRT, Q/DQ ONNX) get closer to FP32 on the held-out ones; true: always kept",
                              ("auto", True, False)),
    ),
    "backend": _section(
        int8_io=Field((bool,), False, "TFLite: int8 model inputs/outputs instead of float32"),
        keep_layout=Field((bool,), False, "TFLite: keep NCHW inputs instead of converting to NHWC"),
        threads=Field((int,), None, "runtime threads on the device (default: the target's)", minimum=1,
                      maximum=1024),  # runtimes take a C int: a huge count was an internal error
        build_engine=Field((bool,), True, "TensorRT: build the engine at build time when tensorrt imports on the host"),
        workspace_mb=Field((int,), None, "TensorRT builder workspace limit", minimum=1, maximum=10_000_000),
        dla_core=Field((int,), None, "Jetson: run on this DLA core (GPU fallback on)", minimum=0, maximum=255),
        per_channel=Field((bool,), True, "per-channel weight scales"),
        activations=Field((str,), "int8", "TFLite: int16 = 16x8 for the whole model (int16 activations, int8 weights) "
                          "wherever LiteRT has an int16 kernel; runs on the builtin kernels, not XNNPACK",
                          ("int8", "int16")),
        share_concat_scales=Field((bool,), True, "TFLite: a Concat input whose only consumer is the Concat is "
                                  "written on the Concat's scale (no requantizing QUANTIZE op)"),
        float_output_concats=Field((bool,), True, "TFLite: a Concat writing a model output from inputs whose ranges "
                                   "differ more than 16x stays float (each input keeps its own int8 grid)"),
        wide_range_float=Field((bool,), True, "TFLite: a tensor whose int8 grid rounds most of its non-zero "
                               "calibration values to 0 (power spectra, un-logged energies) stays float, with "
                               "the nodes that write and read it"),
        float_long_recurrences=Field((bool,), True, "TFLite: an LSTM / GRU / RNN unrolled over more than 64 steps "
                                     "stays float (its int8 state error compounds step by step)"),
    ),
    "precision": _section(
        budget=Field((int, float, dict), None, "max accuracy drop vs FP32 (enables automatic mixed precision); "
                     "{max_sequence_drop: N} budgets a CTC head's greedy readings (1 - edit distance vs FP32's) instead "
                     "of its per-step argmax; {min_sqnr_db: N} asks for a minimum output SQNR instead (detectors, "
                     "regressors)", minimum=0),
        float_nodes=Field((list,), [], "ONNX node names kept in float (FP16 on GPUs)"),
        int16_nodes=Field((list,), [], "TFLite: ONNX node names lowered 16x8 (int16 activations, int8 weights); "
                          "the rest stays int8"),
        levels=Field((list,), None, "what the budget search may give a node group, cheapest first: [int8, float] "
                     "(default) or [int8, int16, float] (TFLite: int16 = 16x8 before float)"),
    ),
    "report": _section(
        host=Field((bool,), True, "measure int8 vs FP32 on this host after the build and render the report (arm-cpu: "
                   "run.py; TensorRT targets: the Q/DQ ONNX in ONNX Runtime, host emulation)"),
        min_sqnr_db=Field((int, float), 20.0, "warn when an output's SQNR vs FP32 on the host is below this (dB)"),
        min_agreement=Field((int, float), 0.97, "warn when the argmax agreement with FP32 on the host is below this",
                            minimum=0),
        iterations=Field((int,), 200, "timed iterations", minimum=1),
        warmup=Field((int,), 20, "warm-up iterations", minimum=0),
        max_timing_s=Field((int, float), 60, "the host report stops timing after this many seconds (whole blocks "
                           "of 10 inferences per model, at least one; results.json records the iterations "
                           "done)", minimum=1),
        eval_limit=Field((int,), 500, "use at most this many eval samples (build-time evaluation and the bundle)", minimum=1),
        eval_max_mb=Field((int, float), 16, "the bundle's eval data (inputs + FP32 reference outputs, uncompressed) stays under this many MB", minimum=0),
        holdout=Field((int, float), 0.1, "without --eval: fraction (below 1) of the calibration samples held out for evaluation and not calibrated on; 0 = no accuracy report", minimum=0),
    ),
    "regress": _section(
        max_drop=Field((int, float), 0.01, "max absolute accuracy drop vs the baseline", minimum=0),
        max_latency_increase=Field((str, int, float), "10%", "max latency increase (percent string or ratio)"),
        metrics=Field((list,), None, "accuracy metrics to compare (default: all present)"),
        max_sqnr_drop_db=Field((int, float), 1.0, "max drop of per-output SQNR vs the baseline, in dB", minimum=0),
    ),
}


def defaults() -> dict:
    def build(schema: dict) -> dict:
        return {k: (build(v) if isinstance(v, dict) else copy.deepcopy(v.default)) for k, v in schema.items()}

    return build(SCHEMA)


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{path}: config file not found")
    data = read_yaml_file(path, "config file", CONFIG_MAX_BYTES)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of options, got {type(data).__name__}")
    validate(data, source=str(path))
    return data


def _number_problem(value, spec: Field) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "a finite number"
    if spec.minimum is not None and value < spec.minimum:
        return f">= {spec.minimum:g}"
    if spec.maximum is not None and value > spec.maximum:
        return f"<= {spec.maximum:g}"
    return ""


def validate(data: dict, source: str = "config", schema: dict | None = None, prefix: str = "") -> None:
    """Raise UserError on unknown keys, wrong types, values outside the choices or ranges."""
    schema = SCHEMA if schema is None else schema
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            allowed = ", ".join(sorted(schema))
            raise UserError(f"{source}: unknown key '{dotted}'; allowed keys here: {allowed}")
        spec = schema[key]
        if isinstance(spec, dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{dotted}' must be a mapping with keys {', '.join(sorted(spec))}")
            validate(value, source, spec, dotted + ".")
            continue
        if value is None:
            continue
        if float in spec.types and isinstance(value, str) and _EXPONENT_FLOAT.match(value):
            value = data[key] = float(value)  # PyYAML (YAML 1.1) reads `1e-5` as a string
        if isinstance(value, bool) and bool not in spec.types:
            ok = False
        else:
            ok = isinstance(value, spec.types)
        if not ok:
            names = " or ".join(t.__name__ for t in spec.types)
            raise UserError(f"{source}: '{dotted}' must be {names}, got {type(value).__name__} ({_short(value)})")
        if isinstance(value, str) and "\0" in value:  # a path with one was an internal error (ValueError)
            raise UserError(f"{source}: '{dotted}' holds a NUL character ({_short(value)}); write the value without it")
        if spec.choices and value not in spec.choices:
            raise UserError(f"{source}: '{dotted}' must be one of {_choices(spec)}, got {_short(value)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = _number_problem(value, spec)
            if problem:
                raise UserError(f"{source}: '{dotted}' must be {problem}, got {value!r}")
        checker = _VALUE_CHECKS.get(dotted)
        if checker:
            checker(value, f"{source}: '{dotted}'")


def _choices(spec: Field, separator: str = ", ") -> str:
    """The allowed values as a user writes them in YAML (true, not True)."""
    return separator.join(str(c).lower() if isinstance(c, bool) else str(c) for c in spec.choices)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# a float written with an exponent and no point: YAML 1.2 reads `1e-5` as a number, PyYAML (YAML 1.1)
# as the string '1e-5', so `fold.eps: 1e-05` copied from the reference below was 'must be int or float'
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


def _numbers(value, where: str, count: int | None = None, positive: bool = False, integer: bool = False) -> None:
    if not integer and isinstance(value, list):
        value[:] = [float(v) if isinstance(v, str) and _EXPONENT_FLOAT.match(v) else v for v in value]
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, kinds) for v in value):
        raise UserError(f"{where} must be a list of {'integers' if integer else 'numbers'}, got {_short(value)}")
    if count is not None and len(value) != count:
        raise UserError(f"{where} must have {count} entries, got {len(value)}")
    if any(isinstance(v, float) and not math.isfinite(v) for v in value):
        raise UserError(f"{where} must hold finite numbers, got {_short(value)}")
    if positive and any(v <= 0 for v in value):
        raise UserError(f"{where} must hold positive numbers, got {_short(value)}")


def _check_input_shapes(value: dict, where: str) -> None:
    for name, shape in value.items():
        if not isinstance(name, str) or not name:
            raise UserError(f"{where} keys must be input names (strings), got {_short(name)}")
        _numbers(shape, f"{where[:-1]}.{name}'", positive=True, integer=True)
        if not shape:
            raise UserError(f"{where[:-1]}.{name}' must list at least one dimension, like [1, 3, 224, 224]")
        check_shape_size(shape, f"{where[:-1]}.{name}'")


def _check_input_values(value: dict, where: str) -> None:
    for name, pinned in value.items():
        if not isinstance(name, str) or not name:
            raise UserError(f"{where} keys must be input names (strings), got {_short(name)}")
        if isinstance(pinned, str) and _EXPONENT_FLOAT.match(pinned):
            pinned = value[name] = float(pinned)  # `sr: 16e3`, a number in YAML 1.2
        flat, pending = [], [pinned]
        while pending:
            item = pending.pop()
            (pending.extend if isinstance(item, list) else flat.append)(item)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in flat):
            raise UserError(f"{where[:-1]}.{name}' must be a finite number or a list of them, like 16000, "
                            f"got {_short(pinned)}")


def _check_temperature(value, where: str) -> None:
    if isinstance(value, str):
        if value not in ("none", "auto"):
            raise UserError(f"{where} must be none, auto or a positive number, got {_short(value)}")
    elif isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{where} must be none, auto or a positive number, got {value!r}")


def _check_strings(value, where: str) -> None:
    if any(not isinstance(v, str) for v in value):
        raise UserError(f"{where} must be a list of strings, got {_short(value)}")


PRECISION_LEVELS = ("int8", "int16", "float")


def _check_levels(value, where: str) -> None:
    """int8 first, float last, int16 optional between (the planner moves a group up the list)."""
    if list(value) not in (["int8", "float"], ["int8", "int16", "float"]):
        raise UserError(f"{where} must be [int8, int16, float] or [int8, float], got {_short(value)}")


def _check_overrides(value: dict, where: str) -> None:
    for name, method in value.items():
        if not isinstance(name, str) or method not in CALIBRATION_METHODS:
            raise UserError(f"{where} maps a tensor name or op type to one of {', '.join(CALIBRATION_METHODS)}, "
                            f"got {_short(name)}: {_short(method)}")


def _check_percentile(value, where: str) -> None:
    if not 0 < value <= 100:
        raise UserError(f"{where} must be in (0, 100], got {value!r}")


def _check_budget(value, where: str) -> None:
    """A number (checked by the schema) or one of {max_drop: N >= 0} / {max_sequence_drop: N >= 0} /
    {min_sqnr_db: N}."""
    if not isinstance(value, dict):
        return
    number = next(iter(value.values()), None) if len(value) == 1 else None
    drops = ({"max_drop"}, {"max_sequence_drop"})
    if (set(value) not in (*drops, {"min_sqnr_db"}) or isinstance(number, bool)
            or not isinstance(number, (int, float)) or not math.isfinite(number)
            or (set(value) in drops and number < 0)):
        raise UserError(f"{where} must be a number (max accuracy drop), {{max_drop: N >= 0}}, "
                        f"{{max_sequence_drop: N >= 0}} or {{min_sqnr_db: N}}, got {_short(value)}")


_VALUE_CHECKS = {
    "precision.budget": _check_budget,
    "calibration.percentile": _check_percentile,
    "input_shapes": _check_input_shapes,
    "input_values": _check_input_values,
    "output_names": _check_strings,
    "preprocess.size": lambda v, w: _numbers(v, w, count=2, positive=True, integer=True),
    "preprocess.mean": lambda v, w: _numbers(v, w),
    "preprocess.std": lambda v, w: _numbers(v, w, positive=True),
    "fold.mean": lambda v, w: _numbers(v, w),
    "fold.std": lambda v, w: _numbers(v, w, positive=True),
    "fold.temperature": _check_temperature,
    "calibration.overrides": _check_overrides,
    "precision.float_nodes": _check_strings,
    "precision.int16_nodes": _check_strings,
    "precision.levels": _check_levels,
    "regress.metrics": _check_strings,
}


def validate_target_options(options: dict, source: str) -> None:
    """A target profile's `options:` use the `backend:` section's names, types and ranges."""
    backend = SCHEMA["backend"]
    for key, value in options.items():
        if key in backend:
            validate({key: value}, source, backend, "options.")


def merge(base: dict, override: dict) -> dict:
    """Deep-merge `override` into a copy of `base`; None values in override do not clobber."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(result.get(key), dict) and key in SCHEMA and isinstance(SCHEMA[key], dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """'image:1x3x224x224' -> ('image', [1, 3, 224, 224])."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name or not dims:
        raise UserError(f"--input-shape '{text}': expected NAME:1x3x224x224")
    parts = dims.lower().split("x")
    if not all(part.isascii() and part.isdigit() for part in parts):  # int() also takes "+3", "3_0", "١"
        raise UserError(f"--input-shape '{text}': dimensions must be integers like 1x3x224x224")
    shape = [int(part) for part in parts]
    if any(d <= 0 for d in shape):
        raise UserError(f"--input-shape '{text}': dimensions must be positive")
    check_shape_size(shape, f"--input-shape '{text}'")
    return name, shape


def check_shape_size(shape: list[int], where: str) -> None:
    """An input of more elements than any tensor may hold (the allocation-bomb bound) is refused
    here, before numpy or ONNX meet a dim past int64."""
    from edgepipe.modelcheck import MAX_TENSOR_ELEMENTS

    count = 1
    for dim in shape:
        count *= dim
    if count > MAX_TENSOR_ELEMENTS:
        raise UserError(f"{where}: the input would hold {count} elements, more than {MAX_TENSOR_ELEMENTS}; "
                        "no edge device can allocate that, give the shape the model runs with")


def parse_input_value(text: str) -> tuple[str, float | int]:
    """'sr=16000' -> ('sr', 16000); a number, integer when written as one."""
    name, sep, value = text.rpartition("=")
    if not sep or not name or not value:
        raise UserError(f"--input-value '{text}': expected NAME=VALUE, like sr=16000")
    try:
        number = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
    except ValueError:
        raise UserError(f"--input-value '{text}': the value must be a number, like sr=16000") from None
    if not math.isfinite(number):
        raise UserError(f"--input-value '{text}': the value must be finite")
    return name, number


def parse_each(texts, option: str) -> dict:
    """{input name: value} of a repeatable `--input-shape` / `--input-value`; an input given twice
    with different values is refused (the last one silently won, whichever the user meant)."""
    parse = parse_input_shape if option == "--input-shape" else parse_input_value
    parsed: dict = {}
    given: dict[str, str] = {}
    for text in texts:
        name, value = parse(text)
        if name in parsed and parsed[name] != value:
            raise UserError(f"{option} gives input '{name}' twice ('{given[name]}' and '{text}'); give each input once")
        parsed[name], given[name] = value, text
    return parsed


def reference_rows(schema: dict | None = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) rows for the README's config reference."""
    schema = SCHEMA if schema is None else schema
    rows = []
    for key, spec in schema.items():
        if isinstance(spec, dict):
            rows.extend(reference_rows(spec, f"{prefix}{key}."))
            continue
        kind = _choices(spec, " / ") if spec.choices else "/".join(t.__name__ for t in spec.types)
        if spec.minimum is not None:
            kind += f" >= {spec.minimum:g}"
        if spec.maximum is not None:
            kind += f", <= {spec.maximum:g}"
        rows.append((prefix + key, kind, repr(spec.default), spec.help))
    return rows
