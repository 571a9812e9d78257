"""The deployment bundle: one folder a device can verify and run with no edgepipe installed.

Why it is shaped this way:
- deterministic: the same inputs give byte-identical files (sorted keys, no timestamps, a
  hand-written eval .npz with fixed zip metadata), so a rebuild can be diffed and cached;
- atomic: everything is written into a staging folder next to `out_dir` and swapped in at the
  end, so a failed build never leaves a half-written bundle and the previous one survives;
- verifiable: `manifest.json` lists every file's size and sha256, and `SHA256SUMS` (coreutils
  format, includes manifest.json) lets a device check the bundle with `sha256sum -c` alone.
`report/` (results written by run.py) and the manifest's `device_generated` patterns (an engine
built on the device) are outside the manifest and ignored by `verify_bundle`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io as iolib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import numpy as np

from edgepipe import __version__
from edgepipe.jsonfile import read_json
from edgepipe.errors import BudgetError, UserError
from edgepipe.templating import render

MANIFEST = "manifest.json"
SHA256SUMS = "SHA256SUMS"
REPORT_DIR = "report"
EVAL_FILE = "eval/eval.npz"
RESERVED_KEYS = ("schema", "target", "source", "files", "io", "stages", "eval")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20


class VerificationError(BudgetError):
    """Bundle files do not match their manifest (tampered or incomplete): exit code 1."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def json_bytes(data) -> bytes:
    """Canonical JSON used for every file edgepipe writes into a bundle."""
    return (json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def safe_relative(path: str) -> PurePosixPath:
    """A bundle-relative POSIX path; refuses absolute paths and `..` (never write outside)."""
    rel = PurePosixPath(str(path).replace("\\", "/"))
    if not str(path) or rel.is_absolute() or ".." in rel.parts or str(rel) in ("", "."):
        raise UserError(f"bundle path '{path}' must be relative and stay inside the bundle")
    return rel


# ----------------------------------------------------------------------------- eval data


def write_eval_npz(path: Path, eval_data: dict) -> dict:
    """Write `eval_data` as a deterministic .npz that np.load reads; returns its manifest entry.

    eval_data: {"inputs": {onnx input name: [N, ...]}, "reference": {onnx output name: [N, ...]},
    "labels": int array [N] or None}. Keys in the file: `input:<name>`, `reference:<name>`,
    `labels`.
    """
    arrays: dict[str, np.ndarray] = {}
    for name, value in (eval_data.get("inputs") or {}).items():
        arrays[f"input:{name}"] = np.ascontiguousarray(value)
    for name, value in (eval_data.get("reference") or {}).items():
        arrays[f"reference:{name}"] = np.ascontiguousarray(value)
    labels = eval_data.get("labels")
    if labels is not None:
        arrays["labels"] = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    if not any(k.startswith("input:") for k in arrays):
        raise ValueError("eval_data needs at least one input array")
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise ValueError(f"eval arrays disagree on the number of samples: {sorted(counts)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for key in sorted(arrays):
            buffer = iolib.BytesIO()
            np.lib.format.write_array(buffer, arrays[key], allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=6)
    return {
        "file": EVAL_FILE,
        "samples": counts.pop(),
        "labels": labels is not None,
        "inputs": sorted(eval_data.get("inputs") or {}),
        "reference": sorted(eval_data.get("reference") or {}),
    }


# ----------------------------------------------------------------------------- staging


def _place_files(staging: Path, files: dict) -> None:
    for rel, source in sorted(files.items()):
        dest = staging / safe_relative(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, (bytes, bytearray)):
            dest.write_bytes(bytes(source))
        elif isinstance(source, str):
            dest.write_text(source)
        else:
            shutil.copyfile(Path(source), dest)


def _render_templates(staging: Path, templates: Iterable, context: dict, packages: tuple[str, ...]) -> None:
    for template_name, rel, extra in templates:
        dest = staging / safe_relative(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(render(template_name, packages, **{**context, **(extra or {})}))


def _requirements(target: dict) -> str:
    """requirements.txt for `pip install -r` on the device: one requirement per project name."""
    from packaging.requirements import InvalidRequirement, Requirement

    lines, names = [], set()
    for text in ["numpy>=1.19", *[str(r) for r in target.get("runtime_requirements") or []]]:
        try:
            name = Requirement(text).name.lower()
        except InvalidRequirement as exc:
            raise ValueError(f"target '{target.get('name')}': runtime requirement {text!r} is not a pip requirement") from exc
        if name not in names:
            names.add(name)
            lines.append(text)
    return "\n".join(lines) + "\n"


def _is_excluded(rel: str, patterns: Iterable[str]) -> bool:
    if rel in (MANIFEST, SHA256SUMS) or rel == REPORT_DIR or rel.startswith(REPORT_DIR + "/"):
        return True
    return any(fnmatch.fnmatch(rel, p) for p in patterns)


def bundle_files(root: Path, generated_patterns: Iterable[str] = ()) -> list[str]:
    """Every regular file and symlink under `root` that belongs in the manifest, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if not _is_excluded(rel, generated_patterns):
                found.append(rel)
    return sorted(found)


def _normalize_modes(staging: Path) -> None:
    """Fixed permissions (scripts executable), so the folder and its archive are reproducible."""
    os.chmod(staging, 0o755)
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in dirnames:
            os.chmod(Path(dirpath) / name, 0o755)
        for name in filenames:
            executable = name.endswith((".sh", ".py")) and Path(dirpath) == staging
            os.chmod(Path(dirpath) / name, 0o755 if executable else 0o644)


def sha256sums_text(entries: list[dict]) -> str:
    """coreutils `sha256sum` format: `<hex>  <path>` (two spaces = text mode), sorted by path."""
    return "".join(f"{e['sha256']}  {e['path']}\n" for e in sorted(entries, key=lambda e: e["path"]))


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Replace `out_dir` by `staging`; the old bundle stays intact until the final rename."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.rmdir(backup)
    os.rename(out_dir, backup)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(backup, out_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise UserError(f"{out_dir}: exists and is not a bundle directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise UserError(f"{out_dir}: is a non-empty folder without {MANIFEST}; refusing to replace it, choose another --out")


# ----------------------------------------------------------------------------- write


def write_bundle(
    out_dir: Path,
    *,
    target: dict,
    files: dict,
    template_context: dict,
    io: dict,
    stages: list,
    source: dict,
    extra_manifest: dict,
    eval_data: dict | None,
    hooks: Iterable[Callable[[Path], None]] = (),
    template_packages: tuple[str, ...] = (),
) -> dict:
    """Write the bundle into `out_dir` atomically; returns the manifest (also in manifest.json).

    `files`: {relative path: Path | bytes | str}; `hooks(staging_dir)` add files before the
    manifest is computed. `template_context["runner_template"]` (required: the target's) names the
    Runner that run.py includes; `template_context["model_file"]` names the model.
    `template_packages`: the target plugin's packages whose templates/ are searched first.
    """
    out_dir = Path(out_dir).absolute()
    _check_replaceable(out_dir)
    if not template_context.get("runner_template"):
        raise ValueError("template_context needs the target's 'runner_template'")
    clash = sorted(set(extra_manifest or {}) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra_manifest may not override {clash}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        manifest = _build_in(staging, target, files, template_context, io, stages,
                             source, extra_manifest or {}, eval_data, hooks, tuple(template_packages))
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _build_in(staging, target, files, template_context, io, stages, source,
              extra_manifest, eval_data, hooks, template_packages) -> dict:
    _place_files(staging, files)
    eval_entry = write_eval_npz(staging / EVAL_FILE, eval_data) if eval_data else None
    target_info = {k: v for k, v in sorted(target.items()) if k != "device_readme"}
    model_file = extra_manifest.get("model") or template_context.get("model_file")
    context = {
        "model_file": model_file,
        **template_context,
        "target": target,
        "io": io,
        "eval": eval_entry,
        "edgepipe_version": __version__,
        "files": sorted(files),
    }
    builtin = [("run.py.j2", "run.py", {}), ("bundle_README.md.j2", "README.md", {})]
    _render_templates(staging, builtin, context, template_packages)
    (staging / "requirements.txt").write_text(_requirements(target))
    for hook in hooks:
        hook(staging)
    _normalize_modes(staging)
    generated = list(extra_manifest.get("device_generated") or [])
    entries = []
    for rel in bundle_files(staging, generated):
        path = staging / rel
        if path.is_symlink():
            raise UserError(f"bundle file '{rel}' is a symlink; bundles hold regular files only")
        entries.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
    manifest = {
        **extra_manifest,
        "schema": 1,
        "edgepipe_version": __version__,
        "target": target_info,
        "source": source,
        "files": entries,
        "io": io,
        "stages": stages,
        "eval": eval_entry,
    }
    if model_file:
        manifest["model"] = model_file
    manifest_bytes = json_bytes(manifest)
    (staging / MANIFEST).write_bytes(manifest_bytes)
    sums = entries + [{"path": MANIFEST, "sha256": hashlib.sha256(manifest_bytes).hexdigest()}]
    (staging / SHA256SUMS).write_text(sha256sums_text(sums))
    _normalize_modes(staging)
    return json.loads(manifest_bytes)


# ----------------------------------------------------------------------------- verify


def load_manifest(bundle: Path) -> dict:
    path = Path(bundle) / MANIFEST
    manifest = read_json(path, "manifest", f"is '{bundle}' an edgepipe bundle?")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise UserError(f"{path}: has no 'files' list; rebuild the bundle with edgepipe build")
    return manifest


def read_sha256sums(path: Path) -> dict[str, str]:
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, _, name = line.partition("  ")
            sums[name.lstrip("*")] = digest.strip()
    return sums


def verify_bundle(path: Path) -> list[str]:
    """Problems found in the bundle at `path` (empty list = every file verified)."""
    root = Path(path)
    manifest = load_manifest(root)
    problems: list[str] = []
    listed: dict[str, dict] = {}
    for entry in manifest["files"]:
        rel = str(entry.get("path", "")) if isinstance(entry, dict) else ""
        try:
            safe_relative(rel)
        except UserError:
            problems.append(f"{rel or '?'}: unsafe path in the manifest")
            continue
        listed[rel] = entry
        problems += _check_file(root, rel, entry)
    sums_path = root / SHA256SUMS
    if not sums_path.is_file():
        problems.append(f"{SHA256SUMS}: missing")
    else:
        sums = read_sha256sums(sums_path)
        manifest_digest = sha256_file(root / MANIFEST)
        if sums.get(MANIFEST) != manifest_digest:
            problems.append(f"{MANIFEST}: sha256 does not match {SHA256SUMS} (manifest edited?)")
        for rel in sorted(set(sums) - set(listed) - {MANIFEST}):
            problems.append(f"{rel}: in {SHA256SUMS} but not in the manifest")
        for rel in sorted(set(listed) - set(sums)):
            problems.append(f"{rel}: in the manifest but not in {SHA256SUMS}")
        for rel in sorted(set(listed) & set(sums)):
            if sums[rel] != listed[rel].get("sha256"):
                problems.append(f"{rel}: {SHA256SUMS} and manifest disagree on its sha256")
    for rel in bundle_files(root, manifest.get("device_generated") or []):
        if rel not in listed:
            problems.append(f"{rel}: extra file not listed in the manifest")
    return problems


def _check_file(root: Path, rel: str, entry: dict) -> list[str]:
    path = root / rel
    if path.is_symlink():
        return [f"{rel}: is a symlink"]
    if not path.is_file():
        return [f"{rel}: missing"]
    size = path.stat().st_size
    if size != entry.get("size"):
        return [f"{rel}: size {size} bytes, manifest says {entry.get('size')} (modified)"]
    if sha256_file(path) != entry.get("sha256"):
        return [f"{rel}: sha256 mismatch (modified)"]
    return []


def verified_file_count(path: Path) -> int:
    return len(load_manifest(Path(path))["files"]) + 1  # + manifest.json itself (SHA256SUMS)
