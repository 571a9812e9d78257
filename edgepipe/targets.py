"""Target plugins: what a device needs, found through the `edgepipe.targets` entry-point group.

A target says which backend lowers the model (tensorrt | tflite | its own), how activations are
quantized (symmetric for TensorRT, asymmetric for TFLite), which runner run.py includes and
whether the bundle can be run on this host after the build. A plugin package may carry its own
`templates/` folder (its runner, files it renders), searched before edgepipe's templates. The
built-ins are registered exactly like a third-party package would register its own, and YAML
profiles (`targets/profiles/*.yaml`, or a `--target path/to/profile.yaml`) derive from a plugin
without any Python:

    name: rpi5
    base: arm-cpu
    description: Raspberry Pi 5 (Cortex-A76, 4 cores)
    options: {threads: 4}
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from edgepipe.errors import UserError

ENTRY_POINT_GROUP = "edgepipe.targets"


@dataclass
class BackendResult:
    """What a backend wrote into the staging dir, and what the manifest should say about it."""

    files: list[str]  # paths relative to the bundle root
    io: dict  # {"inputs": [...], "outputs": [...]} with layout and quantization
    manifest: dict = field(default_factory=dict)  # extra manifest entries (precision, reports)
    template_context: dict = field(default_factory=dict)
    note: str = ""  # one line shown next to the backend stage in the build output


class Target:
    """Base class of target plugins; subclasses set the class attributes and `build_backend`."""

    name: str = ""
    backend: str = ""  # "tensorrt" | "tflite"
    description: str = ""
    precision: str = ""  # human readable default precision policy
    input_layout: str = "NCHW"
    activation_symmetric: bool = True
    runtime_requirements: list[str] = []
    verified_here: str = ""  # what this machine verifies for this target
    runner_template: str = ""  # Runner included into run.py (see docs/ARCHITECTURE.md, runner contract)
    host_report: bool = False  # can run.py run on the build host (arm-cpu: the TFLite interpreter)
    device_readme: str = ""  # extra markdown for the bundle README
    default_options: dict[str, Any] = {}
    backend_options: tuple[str, ...] = ("threads",)  # the edgepipe.yaml `backend.*` keys this target reads
    int16_activations: bool = False  # lowers named nodes 16x8 (`precision.int16_nodes` -> backend "int16_nodes")
    float32_io: bool = False  # the runtime takes float32 (or int8) inputs only: a float16 model's I/O becomes float32
    # fold.* values where edgepipe.yaml leaves a key unset (None): folds whose gain was measured on
    # this target's int8 form (settings.fold_settings_of); unset elsewhere means off
    fold_defaults: dict[str, Any] = {}
    float64_kernels: bool = True  # False: float64 tensors are computed in float32 (edgepipe/stages/float64.py)

    def __init__(self, options: dict | None = None, profile: str | None = None):
        self.options = {**copy.deepcopy(self.default_options), **(options or {})}
        self.profile = profile
        self.plugin = self.name  # set by load_target to the entry point it came from

    def operators(self):
        """The `OpTable` of (domain, op type, opset) this target runs (edgepipe/backends/support.py).

        The default is every standard ONNX operator; backends narrow it."""
        return standard_onnx_operators()

    def supports(self, model) -> list[tuple[str, str, str]]:
        """Nodes this target cannot run: [(node name, op type, reason)], subgraphs included.

        Custom domains and control flow are refused by name on every target; a plugin whose
        backend has further per-node rules (shapes, attributes) extends this list."""
        from edgepipe.backends.support import unsupported_operators

        return unsupported_operators(model, self.operators(), self.name)

    def build_backend(self, model, calibration, out_dir: Path, settings: dict) -> BackendResult:
        raise NotImplementedError

    def predict_delegation(self, model) -> dict | None:
        """For `inspect`: which ops the built model would leave outside the runtime's accelerated
        path (e.g. XNNPACK), predicted without calibration; None when the target does not know."""
        return None

    def qdq_model(self, model, calibration, keep_float=frozenset()) -> tuple[Any, dict]:
        """(Q/DQ ONNX model, report) simulating this target's int8 in ONNX Runtime, with `keep_float`
        nodes left float: how the accuracy tools (sensitivity, mixed precision, finetune) quantize.
        The report's `quantized_nodes` names what is quantized. Default: TensorRT's Q/DQ placement
        with this target's activation scheme and `per_channel` option. Inside `sharing_simulations()`
        a state asked for again gets the model built the first time (do not change it in place)."""
        from edgepipe.backends.qdq import simulated_int8_model

        def build():
            return simulated_int8_model(model, calibration, symmetric=self.activation_symmetric, keep_float=keep_float,
                                        per_channel=bool(self.options.get("per_channel", True)))

        shared = getattr(self, "_shared_simulations", None)
        return build() if shared is None else shared.get("qdq", model, calibration, keep_float, build)

    def qdq_variants(self, model, calibration):
        """A function (other calibration, tensor names) -> `qdq_model(model, other)[0]` for a
        calibration that differs from `calibration` only in the ranges of those tensors, derived
        from this calibration's Q/DQ model instead of built again (backends/qdq.py:
        with_activation_ranges); None for a target with its own `qdq_model`."""
        if type(self).qdq_model is not Target.qdq_model:
            return None
        from edgepipe.backends.qdq import with_activation_ranges

        base = self.qdq_model(model, calibration)[0]
        return lambda other, names: with_activation_ranges(base, other, names, symmetric=self.activation_symmetric)

    def int8_session(self, model, calibration):
        """An ONNX Runtime session of `qdq_model(model, calibration)`, its weights quantized once
        (`graph.fold_constant_weights`: same values, fewer kernels per run); shared like `qdq_model`
        inside `sharing_simulations()`."""
        from edgepipe import graph

        def build():
            return graph.make_session(graph.fold_constant_weights(self.qdq_model(model, calibration)[0],
                                                                  self.weight_folds()))

        shared = getattr(self, "_shared_simulations", None)
        return build() if shared is None else shared.get("session", model, calibration, frozenset(), build)

    def weight_folds(self) -> dict | None:
        """Inside `sharing_simulations()`, the cache `graph.fold_constant_weights` shares between
        the states the checks simulate (the same weights folded once); None outside it."""
        shared = getattr(self, "_shared_simulations", None)
        return None if shared is None else shared.weight_folds

    @contextlib.contextmanager
    def sharing_simulations(self):
        """Within this block, `qdq_model` and `int8_session` build each (model, calibration state)
        once and hand the same result to later requests (edgepipe/shared_simulations.py): the
        build's checks simulate the same states several times."""
        from edgepipe.shared_simulations import SharedSimulations

        previous = getattr(self, "_shared_simulations", None)
        self._shared_simulations = previous or SharedSimulations()
        try:
            yield self
        finally:
            self._shared_simulations = previous

    def int8_outputs(self, model, calibration, feeds: list[dict], settings: dict) -> tuple[list[dict], str]:
        """(this target's int8 outputs for each feed, {output name: array}; what ran them) on the
        build host, for checks that must judge the int8 model as deployed (calibration.bias_correction).
        Default: `qdq_model` in ONNX Runtime (TensorRT targets deploy that Q/DQ graph: host emulation),
        `int8_session`'s weights quantized once."""
        from edgepipe.session_runs import run_feeds

        session = self.int8_session(model, calibration)
        names = [o.name for o in model.graph.output]
        return [dict(zip(names, outputs)) for outputs in run_feeds(session, feeds, names)], "Q/DQ ONNX in ONNX Runtime"

    def int8_placement(self, model, calibration, backend: dict | None = None):
        """Where this target's int8 puts its grids (`edgepipe.accuracy.placement.Placement`: every
        quantized tensor with its scale and zero point, the int8 nodes, the quantized weights), so
        the planner can switch each point on or off in one ONNX Runtime session; None (default):
        the planner builds `qdq_model` per variant instead. `backend`: the build's `backend.*`
        settings, so the placement is the one the build will write."""
        return None

    def int16_placement(self, model, calibration, backend: dict | None = None):
        """The placement of this target's 16x8 mode (int16 activation grids, int8 weights) for the
        planner's int16 level; None (default): the target has no int16 level."""
        return None

    def check_backend_settings(self, backend: dict) -> None:
        """Refuse a `backend.*` option this target would silently ignore (set away from its default):
        e.g. `per_channel: false` on arm-cpu, whose TFLite weights are always per channel."""
        from edgepipe.config import SCHEMA

        for key, value in sorted(backend.items()):
            spec = SCHEMA["backend"].get(key)
            if value is None or key in self.backend_options or spec is None or value == spec.default:
                continue
            raise UserError(f"backend.{key}: {value!r} has no effect on target '{self.name}' (it reads "
                            f"backend.{', backend.'.join(self.backend_options)}); remove it or choose a "
                            "target that uses it")

    def check_profile_options(self, options: dict, source: str) -> None:
        """Refuse a profile `options:` key this target does not read: a misspelled `thread: 4` (or
        arm-cpu's `per_channel: false`) was kept in the manifest while the board ran the default."""
        import difflib

        known = sorted(set(self.backend_options) | set(self.default_options))
        for key in sorted(options, key=str):
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"{source}: options.{key} is not an option target '{self.plugin or self.name}' reads; "
                            f"{hint}it reads {', '.join(known)}")

    def check_precision_settings(self, precision) -> None:
        """Refuse `precision.int16_nodes` on a target without int16 activations (it would be ignored)."""
        if precision.int16_nodes and not self.int16_activations:
            raise UserError(f"precision.int16_nodes: target '{self.name}' has no int16 activations (16x8 is a "
                            "TFLite mode: arm-cpu); remove it or use precision.float_nodes")
        levels = tuple(getattr(precision, "levels", None) or ())
        if "int16" in levels and not self.int16_activations:
            raise UserError(f"precision.levels: target '{self.name}' has no int16 activations (16x8 is a TFLite "
                            "mode: arm-cpu); use levels: [int8, float]")

    def template_packages(self) -> tuple[str, ...]:
        """Packages whose templates/ folder is searched before edgepipe's: the plugin's own package,
        then those of the plugin classes it derives from (so a subclass can override a runner)."""
        from edgepipe.templating import has_templates

        found: list[str] = []
        for cls in type(self).__mro__:
            if not (isinstance(cls, type) and issubclass(cls, Target)) or cls is Target:
                continue
            module = sys.modules.get(cls.__module__)
            package = getattr(module, "__package__", None) or cls.__module__
            if package not in found and has_templates(package):
                found.append(package)
        return tuple(found)

    def evaluator(self, model, calibration, dataset, settings: dict):
        """callable(float_nodes) -> accuracy metrics on this target's real kernels, or None when
        they cannot run on the build host (the planner then trusts ONNX Runtime Q/DQ)."""
        return None

    def deployed_probe(self, bundle: Path, manifest: dict, tensors: list[str] | None = None):
        """The bundle's deployed model running on this host with its intermediate tensors readable
        (only `tensors` are needed when given, e.g. the outputs):
        an object with `description`, `where` ("host", or "host emulation" when it is not the
        device's runtime), `run(feed, fp32_tensors) -> {ONNX tensor name: float32 array in ONNX
        layout}` and `close()`; None when it cannot run here (`edgepipe compare` then says so)."""
        return None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "backend": self.backend,
            "description": self.description,
            "precision": self.precision,
            "layout": self.input_layout,
            "runtime_requirements": list(self.runtime_requirements or ()),  # a plugin may leave it None
            "verified_here": self.verified_here,
            "options": dict(sorted(self.options.items())),
            "profile": self.profile,
            "plugin": self.plugin,  # the registered target a profile derives from: what `compare` loads
            "device_readme": self.device_readme,
        }


def standard_onnx_operators():
    """Every operator of the ONNX domain, from the opset that introduced it (onnx.defs), except
    control flow: a backend takes If / Loop / Scan only by registering them in its own table."""
    from onnx import defs

    from edgepipe.backends.support import CONTROL_FLOW, OpKey, OpTable

    first: dict[str, int] = {}
    for schema in defs.get_all_schemas_with_history():
        if schema.domain == "" and not schema.deprecated and schema.name not in CONTROL_FLOW:
            first[schema.name] = min(first.get(schema.name, schema.since_version), schema.since_version)
    table = OpTable("standard ONNX operator")
    for op_type, since in first.items():
        table.add(OpKey("", op_type, since), op_type)
    return table


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _profiles() -> dict[str, Path]:
    root = resources.files("edgepipe_targets") / "profiles"
    found = {}
    if root.is_dir():
        for item in root.iterdir():
            if item.name.endswith((".yaml", ".yml")):
                found[item.name.rsplit(".", 1)[0]] = Path(str(item))
    return found


def available_targets() -> list[str]:
    return sorted(set(_entry_points()) | set(_profiles()))


def _load_plugin(name: str) -> type[Target]:
    eps = _entry_points()
    if name not in eps:
        raise UserError(f"unknown target '{name}'; installed targets: {', '.join(available_targets())}")
    try:
        plugin = eps[name].load()
    except (Exception, SystemExit) as exc:  # third-party code: a sys.exit() there ended the build with 0
        raise UserError(f"target plugin '{name}' ({eps[name].value}) failed to import: {_plugin_failure(exc)}; "
                        "fix or uninstall that package") from exc
    if not (isinstance(plugin, type) and issubclass(plugin, Target)):
        raise UserError(f"target plugin '{name}' ({eps[name].value}) is not an edgepipe.targets.Target subclass")
    return plugin


def _read_profile(path: Path) -> dict:
    from edgepipe.config import validate_target_options
    from edgepipe.safeio import read_yaml_file

    data = read_yaml_file(path, "target profile")
    if not isinstance(data, dict) or "base" not in data:
        raise UserError(f"{path}: a target profile needs at least 'base: <target>' (e.g. base: arm-cpu)")
    unknown = set(data) - {"name", "base", "description", "options"}
    if unknown:
        raise UserError(f"{path}: unknown key '{sorted(unknown)[0]}' in target profile; allowed: base, description, name, options")
    if not isinstance(data.get("options", {}) or {}, dict):
        raise UserError(f"{path}: 'options' must be a mapping")
    for key in ("name", "base", "description"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise UserError(f"{path}: '{key}' must be a string, got {type(data[key]).__name__}")
    validate_target_options(data.get("options") or {}, str(path))
    return data


def _base_of(base: str, profile_path: Path) -> str:
    """A profile's `base: other.yaml` relative to the profile's own folder, not to the folder the
    build runs in (a board folder of profiles deriving from each other works from anywhere); a
    path that is not there is taken as written (relative to the current folder) as before."""
    beside = profile_path.parent / base
    if base.endswith((".yaml", ".yml")) and not Path(base).is_absolute() and beside.is_file():
        return str(beside)
    return base


def load_target(name: str, options: dict | None = None, _depth: int = 0) -> Target:
    """Instantiate a target by plugin name, profile name, or path to a profile YAML."""
    if _depth > 5:
        raise UserError(f"target profile '{name}': 'base' chain is too deep (a cycle?)")
    path = Path(name)
    profiles = _profiles()
    if name.endswith((".yaml", ".yml")) or (name in profiles and name not in _entry_points()):
        profile_path = path if name.endswith((".yaml", ".yml")) else profiles[name]
        if not profile_path.exists():
            raise UserError(f"{profile_path}: target profile not found")
        data = _read_profile(profile_path)
        merged = {**(data.get("options") or {}), **(options or {})}
        target = load_target(_base_of(str(data["base"]), profile_path), merged, _depth + 1)
        target.check_profile_options(data.get("options") or {}, str(profile_path))
        # a profile file named in Latin-1 bytes: its stem is not text a bundle README can be written with
        stem = os.fsencode(profile_path.stem).decode("utf-8", "replace")
        target.name = str(data.get("name") or stem)
        target.profile = os.fsencode(profile_path.name).decode("utf-8", "replace")
        if data.get("description"):
            target.description = str(data["description"])
        return target
    plugin = _load_plugin(name)
    try:
        target = plugin(options)
    except UserError:
        raise
    except (Exception, SystemExit) as exc:  # the plugin's own constructor, not an edgepipe bug (exit 3)
        raise UserError(f"target plugin '{name}' ({plugin.__module__}.{plugin.__qualname__}) failed to start: "
                        f"{_plugin_failure(exc)}; fix or uninstall that package") from exc
    target.plugin = name
    return target


def _plugin_failure(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def loadable_targets() -> tuple[list[Target], list[str]]:
    """(every installed target that loads, one error line per one that does not): one broken
    third-party plugin must not hide the others from `edgepipe targets` and `inspect`."""
    loaded, problems = [], []
    for name in available_targets():
        try:
            loaded.append(load_target(name))
        except UserError as exc:
            problems.append(str(exc))
    return loaded, problems
