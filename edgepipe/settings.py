"""Build settings: defaults, `edgepipe.yaml`, CLI options, the shipped demo, and the data domain.

Three layers, later wins: built-in defaults, `edgepipe.yaml` (or --config), CLI options. With no
model anywhere, the shipped demo (model, calibration and eval sets) is used so `edgepipe build
--target arm-cpu` works out of the box. The data helpers decide which domain the data is in: the
deployed (folded) model takes raw inputs when input normalization is folded into it.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepipe import config, graph
from edgepipe.errors import UserError

DEFAULT_CONFIG_NAME = "edgepipe.yaml"


def _schema_default(section: str, key: str):
    return config.SCHEMA[section][key].default


@dataclass(frozen=True)
class ReportSettings:
    """edgepipe.yaml `report:`, typed. Defaults come from config.SCHEMA (the one place the README
    and the error messages read too); values are validated there before this is built."""

    host: bool = _schema_default("report", "host")
    min_sqnr_db: float = _schema_default("report", "min_sqnr_db")
    min_agreement: float = _schema_default("report", "min_agreement")
    iterations: int = _schema_default("report", "iterations")
    warmup: int = _schema_default("report", "warmup")
    max_timing_s: float = _schema_default("report", "max_timing_s")
    eval_limit: int = _schema_default("report", "eval_limit")
    eval_max_mb: float = _schema_default("report", "eval_max_mb")
    holdout: float = _schema_default("report", "holdout")


@dataclass(frozen=True)
class PrecisionSettings:
    """edgepipe.yaml `precision:`, typed; node lists are held as tuples so the settings stay immutable."""

    budget: float | dict | None = _schema_default("precision", "budget")  # a drop, or {min_sqnr_db: N}
    float_nodes: tuple[str, ...] = field(default_factory=tuple)
    int16_nodes: tuple[str, ...] = field(default_factory=tuple)
    levels: tuple[str, ...] | None = None  # None: the target's (Target.precision_levels)

    def __post_init__(self):
        object.__setattr__(self, "float_nodes", tuple(self.float_nodes or ()))
        object.__setattr__(self, "int16_nodes", tuple(self.int16_nodes or ()))
        object.__setattr__(self, "levels", tuple(self.levels) if self.levels else None)


@dataclass(frozen=True)
class RegressSettings:
    """edgepipe.yaml `regress:` (the budgets of `edgepipe regress`), typed; `metrics` None = all present."""

    max_drop: float = _schema_default("regress", "max_drop")
    max_latency_increase: str | float = _schema_default("regress", "max_latency_increase")
    metrics: tuple[str, ...] | None = _schema_default("regress", "metrics")
    max_sqnr_drop_db: float = _schema_default("regress", "max_sqnr_drop_db")

    def __post_init__(self):
        if self.metrics is not None:
            object.__setattr__(self, "metrics", tuple(self.metrics))


# edgepipe.yaml sections passed down typed (the others are still plain dicts)
SECTION_TYPES = {"report": ReportSettings, "precision": PrecisionSettings, "regress": RegressSettings}


def typed_sections(settings: dict) -> dict:
    """`settings` with each section of SECTION_TYPES (a validated, defaults-filled dict) as its frozen
    dataclass; a schema key without a field, or the reverse, fails here (TypeError), not deep in a stage."""
    typed, defaults = dict(settings), config.defaults()
    for section, cls in SECTION_TYPES.items():
        values = typed.get(section)
        if not isinstance(values, cls):
            typed[section] = cls(**{**defaults[section], **(values or {})})
    return typed


def demo_settings() -> dict:
    from edgepipe import demo

    return {
        "model": demo.DEMO_FACTORY,
        "calib": str(demo.demo_calib_dir()),
        "eval": str(demo.demo_eval_dir()),
        "input_shapes": {demo.DEMO_INPUT_NAME: [1, 3, *demo.DEMO_PREPROCESS["size"]]},
        "output_names": [demo.DEMO_OUTPUT_NAME],
        "preprocess": dict(demo.DEMO_PREPROCESS),
        "fold": {"input_normalization": "mean_std"},
    }


def resolve_settings(cli: dict, config_path: str | None) -> tuple[dict, str]:
    """Merge defaults, the config file and CLI options; returns (settings, where the model came from)."""
    settings = config.defaults()
    file_settings: dict = {}
    if config_path:
        file_settings = config_paths_from_its_folder(config.load_config_file(config_path), Path(config_path))
    elif Path(DEFAULT_CONFIG_NAME).exists():
        file_settings = config.load_config_file(DEFAULT_CONFIG_NAME)
    origin = "config"
    if not cli.get("model") and not file_settings.get("model"):
        settings = config.merge(settings, demo_settings())
        origin = "demo"
    settings = config.merge(settings, file_settings)
    settings = config.merge(settings, cli)
    if not settings.get("target"):
        from edgepipe.targets import available_targets

        raise UserError(f"no target given: pass --target NAME (installed: {', '.join(available_targets())})")
    settings["out"] = settings.get("out") or str(Path("build") / default_out_name(str(settings["target"])))
    return typed_sections(settings), origin


# (section, key) of the settings that are paths, and whether the build reads them (inputs) or writes them
CONFIG_PATHS = {(None, "model"): "input", (None, "weights"): "input", (None, "calib"): "input",
                (None, "eval"): "input", (None, "target"): "input", ("calibration", "ranges"): "input",
                (None, "out"): "output", (None, "cache_dir"): "output"}


def config_paths_from_its_folder(file_settings: dict, config_file: Path) -> dict:
    """Relative paths in an edgepipe.yaml name files next to it, so `--config projects/cam/edgepipe.yaml`
    from anywhere builds the same bundle. An input found only from the current directory (how paths
    were read before) is still taken from there. Factory specs and target names are not paths."""
    folder = config_file.parent
    if folder.resolve() == Path.cwd().resolve():
        return file_settings
    rebased = dict(file_settings)
    for (section, key), role in CONFIG_PATHS.items():
        holder = rebased if section is None else rebased.get(section)
        if not isinstance(holder, dict) or not isinstance(holder.get(key), str) or not holder[key]:
            continue
        value = holder[key]
        if Path(value).is_absolute() or not _names_a_path(key, value, folder):
            continue
        beside_config = folder / value
        if role == "input" and not beside_config.exists() and Path(value).exists():
            continue
        if section is not None:
            holder = rebased[section] = dict(holder)
        holder[key] = str(beside_config)
    return rebased


def _names_a_path(key: str, value: str, folder: Path) -> bool:
    """`model: pkg.module:factory` and `target: rpi5` (a plugin or shipped profile) are names, not files."""
    if key == "model":
        from edgepipe.stages.export import is_factory_spec

        return not is_factory_spec(value) or (folder / value).exists()
    if key == "target":
        return value.endswith((".yaml", ".yml"))
    return True


def default_out_name(target: str) -> str:
    """The folder under build/ for a target: its name, or a profile path's file stem (`--target
    /boards/rpi.yaml` built into the profile file itself, `../x.yaml` outside build/)."""
    name = Path(target).name
    if name.endswith((".yaml", ".yml")):
        name = name.rsplit(".", 1)[0]
    return name if name not in ("", ".", "..") else "target"


def require_calib(settings: dict) -> str:
    """The calibration data path; asked for only once the model is known to be convertible."""
    if not settings.get("calib"):
        raise UserError("no calibration data: pass --calib PATH (an image folder, .npz, .npy or a folder of .npy/.npz files) or set 'calib' "
                        "in edgepipe.yaml")
    return settings["calib"]


def file_sha256(path: Path) -> str:
    from edgepipe.delivery.bundle import sha256_file

    return sha256_file(path)


def data_fingerprint(path: str | None) -> str:
    """Content hash of a data file or folder (for the calibration cache key)."""
    if not path:
        return ""
    root = Path(path)
    digest = hashlib.sha256()
    if root.is_file():
        files = [root]
    else:
        from edgepipe.data import sample_tree_files

        files = sample_tree_files(root)
    for item in files:
        digest.update(os.fsencode(item.relative_to(root) if item != root else item.name))  # names need not be UTF-8
        digest.update(bytes.fromhex(file_sha256(item)))  # streamed: a huge stray file is not read whole
    return digest.hexdigest()


def folded_normalization(settings: dict) -> bool:
    return settings["fold"].get("input_normalization", "none") != "none"


def data_preprocess(settings: dict) -> dict:
    """Preprocessing for data fed to the deployed model: raw domain when normalization is folded."""
    pre = dict(settings.get("preprocess") or {})
    if folded_normalization(settings):
        pre.pop("mean", None)
        pre.pop("std", None)
    return pre


def to_model_domain(dataset, settings: dict):
    """Tensor files (.npz/.npy) hold inputs already normalized for the source model; when mean/std
    is folded into the model, the deployed model takes the raw input, so undo the normalization."""
    fold = fold_settings_of(settings)
    if dataset.kind in ("image folder", "wav") or fold.get("input_normalization") != "mean_std":  # raw by nature
        return dataset
    mean, std = fold["mean"], fold["std"]
    if mean is None or std is None:
        return dataset
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def denormalize(sample: dict) -> dict:
        result = {}
        for name, x in sample.items():
            if x.ndim >= 1 and x.shape[0] == mean.size:
                shape = (-1,) + (1,) * (x.ndim - 1)
            elif x.ndim >= 1 and x.shape[-1] == mean.size:
                shape = (1,) * (x.ndim - 1) + (-1,)
            else:
                raise UserError(f"{dataset.source}: input '{name}' has no axis of {mean.size} channels to undo mean/std on")
            result[name] = x * std.reshape(shape) + mean.reshape(shape)
        return result

    return dataset.mapped(denormalize)


def initial_input_shapes(settings: dict) -> dict[str, list[int]]:
    """Static shapes from --input-shape, else from the calibration data.

    Every dynamic dim (symbolic, unknown, -1, 0) of an ONNX input not named by --input-shape is
    read from the first calibration sample of that input; a PyTorch source without --input-shape
    takes the first input of the calibration data.
    """
    shapes = {k: list(v) for k, v in (settings.get("input_shapes") or {}).items()}
    from edgepipe.config import check_shape_size
    from edgepipe.data import infer_static_shape

    model = settings["model"]
    declared: dict[str, tuple | None] = {}
    if str(model).endswith(".onnx") and Path(model).is_file():
        onnx_model = graph.load_model(model, load_external=False)
        pinned = settings.get("input_values") or {}
        declared = {i.name: graph.declared_shape(i) for i in graph.graph_inputs(onnx_model)
                    if i.name not in shapes and i.name not in pinned and not graph.is_static(graph.declared_shape(i))}
        if not declared:
            return shapes
    elif shapes:
        return shapes
    calib = require_calib(settings)
    if not declared:
        declared = {_first_input_name(calib): None}
    for name, shape in declared.items():
        try:
            shapes[name] = list(infer_static_shape(calib, name, settings.get("preprocess"), shape))
        except UserError as exc:
            raise UserError(f"input '{name}' of {model} has dynamic dims and no --input-shape {name}:1x...; "
                            f"reading its shape from the calibration data failed: {exc}") from exc
        check_shape_size(shapes[name], f"input '{name}' of {model}, shape {shapes[name]} read from {calib}")
    return shapes


def _first_input_name(calib: str) -> str:
    if calib.endswith(".npz"):
        try:
            with np.load(calib, allow_pickle=False) as data:
                keys = [k for k in data.files if k != "labels"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # a cut .npz: BadZipFile, was exit 3
            raise UserError(f"{calib}: not a readable numeric .npz file ({exc}); save arrays with numpy.savez") from None
        if keys:
            return keys[0]
    return "input"


def fold_settings_of(settings: dict, target=None) -> dict:
    """The fold stage's settings: keys edgepipe.yaml leaves unset (None) take the target's
    `fold_defaults`, else off."""
    fold = dict(settings["fold"])
    defaults = getattr(target, "fold_defaults", None) or {}
    for key in ("constant_affine", "cross_layer_equalization"):
        if fold.get(key) is None:
            fold[key] = defaults.get(key, False)
    pre = settings.get("preprocess") or {}
    fold["mean"] = fold.get("mean") or pre.get("mean")
    fold["std"] = fold.get("std") or pre.get("std")
    return fold
