"""ARM CPU boards (Raspberry Pi / Cortex-A): full-integer int8 TFLite run by LiteRT + XNNPACK."""

from __future__ import annotations

from pathlib import Path

from edgepipe.targets import BackendResult, Target


class ArmCpuTarget(Target):
    name = "arm-cpu"
    backend = "tflite"
    description = "ARM Cortex-A boards (Raspberry Pi class), LiteRT / tflite-runtime with XNNPACK"
    precision = "int8 full-integer (float32 I/O by default)"
    input_layout = "NHWC"
    activation_symmetric = False
    runner_template = "runner_tflite.py.j2"
    runtime_requirements = ["ai-edge-litert>=1.0"]  # tflite-runtime (numpy<2) also works: see device_readme
    verified_here = (
        "int8 and fp32 .tflite run in the real LiteRT interpreter (x86 XNNPACK and reference kernels); "
        "run.py report on this host; arm64 outputs under qemu-aarch64 (tests marked arm)"
    )
    host_report = True
    float32_io = True
    float64_kernels = False  # TFLite has no float64 CAST / SOFTMAX / EXP: a float64 tail runs in float32
    default_options = {"threads": 2}
    backend_options = ("threads", "int8_io", "keep_layout", "activations", "share_concat_scales",
                       "float_output_concats", "wide_range_float",
                       "float_long_recurrences")  # weights are always per channel
    int16_activations = True
    # exact in float; on the int8 .tflite each removes roundings (a constant affine chain is no
    # int8 tensor of its own) or evens a per-tensor grid (the channels between a Conv and a
    # depthwise Conv, on measured ranges): benchmarks/int8_noise_floor.py's three calibration draws
    fold_defaults = {"constant_affine": True, "cross_layer_equalization": "depthwise"}
    device_readme = (
        "Install the runtime on the board: `pip3 install ai-edge-litert numpy` (64-bit OS, glibc >= 2.34), "
        "or `pip3 install tflite-runtime 'numpy<2'`."
    )

    def operators(self):
        from edgepipe.backends.tflite.ops import registry

        return registry()

    def supports(self, model):
        """Operators (the lowering registry) and each lowering's own checks (shapes, attributes)."""
        from edgepipe.backends.tflite import unsupported_nodes

        return unsupported_nodes(model, self.name)

    def predict_delegation(self, model):
        """int8 ops predicted outside XNNPACK (builtins.py's measured table, placeholder ranges)."""
        from edgepipe.backends.tflite import delegation
        from edgepipe.backends.tflite.validator import ValidationError

        try:
            return delegation.predict(model, {"target": self.name})
        except ValidationError:  # a kernel rule the placeholder ranges break: no prediction
            return None

    def build_backend(self, model, calibration, out_dir: Path, settings: dict) -> BackendResult:
        from edgepipe.backends.tflite import build_tflite, delegation, wide_range
        from edgepipe.backends.tflite.build import FP32_FILE, INT8_FILE

        options = {**self.options, **{k: v for k, v in settings.items() if v is not None}}
        options["float_nodes"] = set(options.get("float_nodes") or [])
        options["int16_nodes"] = set(options.get("int16_nodes") or [])
        options["target"] = self.name  # errors name the target (or profile) the user chose
        result = build_tflite(model, calibration, out_dir, options)
        int8_built = INT8_FILE in result["files"]
        measured = delegation.measure(out_dir / INT8_FILE, int(options.get("threads") or 1)) if int8_built else None
        manifest = {
            "precision": {
                "policy": self.precision if not result.get("int16_nodes") else
                ("16x8 full-integer: int16 activations, int8 weights (float32 I/O by default)"
                 if options.get("activations") == "int16" else f"{self.precision}; int16_nodes 16x8"),
                "float_nodes": sorted(result.get("float_nodes") or []),  # lowered in float (activations fused)
                "requested_float_nodes": sorted(options["float_nodes"]),
                "int8_io": bool(options.get("int8_io")),
                "activations": options.get("activations") or "int8",
                "int16_nodes": sorted(result.get("int16_nodes") or []),  # lowered 16x8
                "requested_int16_nodes": sorted(options["int16_nodes"]),
                "int16_fallback": sorted(result.get("int16_fallback") or []),  # asked for, no int16 kernel: int8
                # {tensor: share of its non-zero calibration values int8 rounds to 0}: kept float
                "wide_range_float": result.get("wide_range") or {},
                "long_recurrences_float": result.get("long_recurrences") or {},  # {LSTM / GRU / RNN: steps}
            },
            "op_histogram": result.get("op_histogram", {}),
        }
        if int8_built:
            manifest["compare_model"] = FP32_FILE  # run.py times it next to the int8 model
            manifest["delegation"] = {"measured_here": measured,
                                      **delegation.predicted_outside(result["kernels"])}
        int16_ops = sum(result["kernels"].get("int16", {}).values())
        note = delegation.summary_line(measured, int16_ops) if int8_built else ""
        wide = wide_range.summary_line(result.get("wide_range") or {}, result.get("long_recurrences") or {})
        note = "; ".join(part for part in (note, wide) if part)
        return BackendResult(files=list(result["files"]), io=result["io"], manifest=manifest, note=note)

    def evaluator(self, model, calibration, dataset, settings: dict):
        from edgepipe.backends.tflite.evaluate import tflite_evaluator
        from edgepipe.backends.tflite.placement import PLACEMENT_OPTIONS

        read = ("activations", *PLACEMENT_OPTIONS)
        options = {k: v for k, v in settings.items() if k in read and v is not None}
        options["target"] = self.name
        return tflite_evaluator(model, calibration, dataset, options)

    def int8_outputs(self, model, calibration, feeds: list[dict], settings: dict) -> tuple[list[dict], str]:
        """The int8 .tflite itself, built with the build's backend settings and run in LiteRT."""
        import tempfile

        from edgepipe.backends.tflite.build import check_supported
        from edgepipe.backends.tflite.evaluate import int8_tflite
        from edgepipe.backends.tflite.runtime import make_interpreter, run_tflite

        options = {**self.options, **{k: v for k, v in settings.items() if v is not None}}
        options.update(float_nodes=set(options.get("float_nodes") or []),
                       int16_nodes=set(options.get("int16_nodes") or []), target=self.name)
        check_supported(model, self.name)
        with tempfile.TemporaryDirectory(prefix="edgepipe-int8-") as tmp:
            path, io = int8_tflite(model, calibration, options, Path(tmp))
            interpreter = make_interpreter(path)
            outputs = [run_tflite(path, io, feed, interpreter=interpreter) for feed in feeds]
        return outputs, "int8 .tflite in LiteRT (XNNPACK)"

    def int8_placement(self, model, calibration, backend: dict | None = None):
        """The .tflite's own grids: every tensor an int8 kernel reads or writes (elementwise and
        activation outputs included), from the lowering itself."""
        from edgepipe.accuracy.placement import Placement
        from edgepipe.backends.tflite.placement import int8_grids

        found = int8_grids(model, calibration, {**(backend or {}), "target": self.name})
        return Placement(found["grids"], frozenset(found["int8_nodes"]), found["weights"], found["fused"],
                         "TFLite full-integer placement (every tensor of an int8 op on the .tflite grid)",
                         tables=found["tables"])

    def int16_placement(self, model, calibration, backend: dict | None = None):
        """The int8 placement plus the whole-model 16x8 .tflite's int16 grids (where LiteRT has an
        int16 kernel), so the planner's emulation mixes int8, int16 and float per group."""
        from dataclasses import replace

        from edgepipe.backends.tflite.placement import int8_grids

        found = int8_grids(model, calibration, {**(backend or {}), "target": self.name}, activations="int16")
        return replace(self.int8_placement(model, calibration, backend),
                       int16_grids={t: found["grids"][t][0] for t in found["int16"]},
                       int16_nodes=frozenset(found["int16_nodes"]),
                       description="TFLite placement, int8 and 16x8 grids (int16 activations where an int16 "
                                   "kernel exists, int8 weights)")

    def deployed_probe(self, bundle: Path, manifest: dict, tensors: list[str] | None = None):
        from edgepipe.backends.tflite.probe import TfliteTensorProbe

        return TfliteTensorProbe(bundle, manifest)
