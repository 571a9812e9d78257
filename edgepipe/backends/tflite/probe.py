"""Every intermediate tensor of a bundle's int8 .tflite, read back under its ONNX name and layout.

Why: `edgepipe compare` matches the deployed model with FP32 tensor by tensor. The lowering names
the first TFLite tensor it writes for an ONNX tensor exactly as the ONNX tensor, and further
representations `name;dtype;perm` (another dtype or layout); helper tensors carry other suffixes
(`;filter`, `;bias`, `;gate`) and are not ONNX tensors. A fused activation leaves only the
activation's output (Conv+Relu: the Conv output has no TFLite tensor).

Layout: TFLite dim i is ONNX dim perm[i]. A `;perm` suffix says perm; for a plain name it is the
permutation that maps the ONNX shape onto the TFLite shape, and when several do (a 1x8x8x8
tensor) the one whose values agree best with FP32 on the first sample, kept afterwards.

Intermediates are only readable without delegates (XNNPACK computes its partitions in its own
buffers), so this runs LiteRT's built-in int8 kernels with `experimental_preserve_all_tensors`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from edgepipe import quantmath
from edgepipe.backends.tflite.build import INT8_FILE
from edgepipe.backends.tflite.lower import inverse, permute
from edgepipe.backends.tflite.runtime import RESOLVERS, model_source, run_tflite
from edgepipe.errors import UserError

DTYPES = ("int8", "float32", "int32", "int16", "uint8")


def _parse(name: str) -> tuple[str, tuple[int, ...] | None] | None:
    """(ONNX name, perm or None) of a TFLite tensor name; None for helper tensors."""
    parts = name.split(";")
    if len(parts) == 1:
        return name, None
    if len(parts) == 3 and parts[1] in DTYPES and parts[2].isdigit():
        return parts[0], tuple(int(c) for c in parts[2])
    return None


class TfliteTensorProbe:
    """probe.run(feed, fp32_tensors) -> {ONNX name: float32 array in ONNX layout}."""

    where = "host"

    def __init__(self, bundle: Path, manifest: dict, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        name = str(manifest.get("model") or INT8_FILE)
        if Path(name).name != name or name in ("", ".", ".."):  # the bundle's own file, never one elsewhere
            raise UserError(f"{bundle}: manifest names model '{name}', not a file in the bundle; rebuild the bundle")
        self.path = Path(bundle) / name
        self.io = manifest.get("io") or {}
        self.description = f"{self.path.name} in LiteRT (int8 kernels, no delegate)"
        try:
            self.interpreter = Interpreter(
                **model_source(self.path), num_threads=threads, experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=getattr(OpResolverType, RESOLVERS["no_delegates"]))
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # LiteRT's reader: not a flatbuffer, a missing op, ...
            raise UserError(f"{self.path}: LiteRT cannot load it ({' '.join(str(exc).split())[:200]}); "
                            "rebuild the bundle") from None
        self.sources: dict[str, tuple[dict, tuple[int, ...] | None]] = {}
        for detail in self.interpreter.get_tensor_details():
            parsed = _parse(detail["name"]) if detail["name"] else None
            if parsed is None:
                continue
            onnx_name, perm = parsed
            if onnx_name not in self.sources or (perm is None and self.sources[onnx_name][1] is not None):
                self.sources[onnx_name] = (detail, perm)  # the plain name (first representation) wins
        self.perms: dict[str, tuple[int, ...]] = {}

    def run(self, feed: dict, reference: dict | None = None) -> dict[str, np.ndarray]:
        run_tflite(self.path, self.io, feed, interpreter=self.interpreter)
        values = {}
        for name, (detail, perm) in self.sources.items():
            raw = self.interpreter.get_tensor(detail["index"])
            scale, zero_point = detail["quantization"]
            value = (quantmath.dequantize(raw, scale, zero_point) if raw.dtype.kind in "iu" and scale
                     else raw.astype(np.float32)) if raw.dtype.kind in "fiu" else None
            if value is None or (raw.dtype.kind in "iu" and not scale):
                continue  # integer data (shapes, indices), not an activation
            want = (reference or {}).get(name)
            perm = perm or self.perms.get(name) or self._layout(name, value, want)
            if perm is None:
                continue
            self.perms[name] = perm
            values[name] = np.ascontiguousarray(value.transpose(inverse(perm)))
        return values

    def _layout(self, name: str, value: np.ndarray, reference: np.ndarray | None) -> tuple[int, ...] | None:
        if reference is None:
            return tuple(range(value.ndim)) if value.ndim else ()
        if reference.ndim != value.ndim:
            return tuple(range(value.ndim)) if reference.size == value.size and value.ndim <= 1 else None
        candidates = [p for p in itertools.permutations(range(value.ndim))
                      if permute(reference.shape, p) == list(value.shape)] if value.ndim <= 6 else []
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        return max(candidates, key=lambda p: quantmath.cosine(reference.transpose(p), value))

    def close(self) -> None:
        self.interpreter = None
