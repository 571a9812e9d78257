"""The deployment bundle: one folder a device can verify and run with no edgepipe installed.

Why it is shaped this way:
- deterministic: the same inputs give byte-identical files (sorted keys, no timestamps, a
  hand-written eval .npz with fixed zip metadata), so a rebuild can be diffed and cached;
- atomic: everything is written into a staging folder next to `out_dir` and swapped in at the
  end, so a failed build never leaves a half-written bundle and the previous one survives;
- verifiable: `manifest.json` lists every file's size and sha256, and `SHA256SUMS` (coreutils
  format, includes manifest.json) lets a device check the bundle with `sha256sum -c` alone.
- never destructive: `--out` must be missing, empty, or a bundle edgepipe wrote (its SHA256SUMS
  holds the manifest's sha256); files a user added are refused by name, not deleted. Deploy
  results (`report/<host>/`, `report/fleet.json`) are carried into the new bundle; the swap is
  one atomic exchange where the OS has it, and an interrupted two-rename swap is undone by the
  next build, which also removes temp folders that killed runs left behind.
`report/` (results written by run.py) and the manifest's `device_generated` files (an engine
built on the device; exact names, never patterns) are outside the manifest; `verify_bundle`
refuses every other unlisted file, links and special files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable


from edgepipe import __version__
from edgepipe.jsonfile import read_json
from edgepipe.errors import BudgetError, UserError
from edgepipe.delivery.eval_data import EVAL_FILE, EvalSamples, write_eval_npz
from edgepipe.delivery.outdir import REPORT_DIR, STAGING_TAG, recover_interrupted_swap, swap_into_place, temp_dir
from edgepipe.safeio import JSON_MAX_BYTES, read_text_bounded
from edgepipe.templating import render

MANIFEST = "manifest.json"
SHA256SUMS = "SHA256SUMS"
RESERVED_KEYS = ("schema", "target", "source", "files", "io", "stages", "eval")
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


def device_generated_names(manifest: dict) -> set[str]:
    """The manifest's `device_generated` entries: exact bundle-relative file names, never globs."""
    names = manifest.get("device_generated") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError("manifest.json: 'device_generated' must be a list of file names")
    for name in names:
        safe_relative(name)
        if any(ch in name for ch in "*?[]"):
            raise UserError(f"manifest.json: device_generated entry '{name}' is a pattern; name exact files")
    return set(names)


def walk_entries(root: Path) -> list[tuple[str, str]]:
    """(relative path, kind) of every non-directory entry under `root`, without following links,
    report/ left out; kind is "file", "link" or "special". Links to folders are entries too."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in list(dirnames):
            if (here / name).is_symlink():
                found.append(((here / name).relative_to(root).as_posix(), "link"))
        dirnames[:] = sorted(d for d in dirnames if not (here / d).is_symlink() and not (here == root and d == REPORT_DIR))
        for name in filenames:
            mode = os.lstat(here / name).st_mode
            kind = "file" if stat.S_ISREG(mode) else "link" if stat.S_ISLNK(mode) else "special"
            found.append(((here / name).relative_to(root).as_posix(), kind))
    return sorted(found)


def bundle_files(root: Path, generated: Iterable[str] = ()) -> list[str]:
    """Every entry under `root` that belongs in the manifest (all but manifest, sums, report/
    and the device-generated files), sorted."""
    skip = {MANIFEST, SHA256SUMS, *generated}
    return [rel for rel, _ in walk_entries(root) if rel not in skip]


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


def is_edgepipe_bundle(folder: Path) -> bool:
    """True when `folder` holds a bundle edgepipe wrote: SHA256SUMS names manifest.json with its
    real sha256 and the manifest says which edgepipe wrote it. A web app's manifest.json is not."""
    manifest_path, sums_path = folder / MANIFEST, folder / SHA256SUMS
    try:
        for path in (manifest_path, sums_path):
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_size > JSON_MAX_BYTES:
                return False
        sums = read_sha256sums(sums_path)
        manifest = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError, RecursionError, UserError):
        return False
    return (sums.get(MANIFEST) == sha256_file(manifest_path) and isinstance(manifest, dict)
            and "edgepipe_version" in manifest and isinstance(manifest.get("files"), list))


def foreign_files(out_dir: Path) -> list[str]:
    """Files in an existing bundle that edgepipe did not write (a rebuild would delete them)."""
    manifest = json.loads((out_dir / MANIFEST).read_bytes())
    try:
        generated = device_generated_names(manifest)
    except UserError:
        generated = set()
    listed = {e.get("path") for e in manifest["files"] if isinstance(e, dict)} | generated
    return [rel for rel in bundle_files(out_dir) if rel not in listed]


def check_out_dir(out_dir: Path) -> None:
    """--out must be missing, empty, or a bundle edgepipe wrote holding nothing else; checked
    before any work, so a wrong --out (`.`, a model folder, a web app) costs nothing."""
    out_dir = Path(out_dir).absolute()
    recover_interrupted_swap(out_dir, is_edgepipe_bundle)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise UserError(f"{out_dir}: exists and is not a bundle folder; choose another --out")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not is_edgepipe_bundle(out_dir):
        raise UserError(f"{out_dir}: is a non-empty folder that is not an edgepipe bundle; refusing to replace "
                        f"it, choose another --out (a new or empty folder)")
    extra = foreign_files(out_dir)
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise UserError(f"{out_dir}: holds '{extra[0]}'{more}, which edgepipe did not write; a rebuild would "
                        f"delete it: move it out of the bundle or choose another --out")


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
    eval_data: "EvalSamples | dict | None",
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
    check_out_dir(out_dir)
    if not template_context.get("runner_template"):
        raise ValueError("template_context needs the target's 'runner_template'")
    clash = sorted(set(extra_manifest or {}) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra_manifest may not override {clash}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_dir(out_dir.parent, f".{out_dir.name}.{STAGING_TAG}-")
    try:
        manifest = _build_in(staging, target, files, template_context, io, stages,
                             source, extra_manifest or {}, eval_data, hooks, tuple(template_packages))
        swap_into_place(staging, out_dir)
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
    generated = device_generated_names(extra_manifest)
    entries = []
    for rel in bundle_files(staging, generated):
        path = staging / rel
        if path.is_symlink() or not path.is_file():
            raise UserError(f"bundle file '{rel}' is a link or special file; bundles hold regular files only")
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
    return check_manifest_fields(manifest, path)


def _numeric_dtype(name) -> bool:
    """A number or bool type name numpy knows ('object' or a string type is fed as text)."""
    import numpy as np

    try:
        return isinstance(name, str) and np.dtype(name).kind in "biuf"
    except (TypeError, ValueError):
        return False


def check_manifest_fields(manifest, path: Path) -> dict:
    """The manifest sections commands read, refused in one line when they are not what edgepipe
    writes (an edited manifest re-sealed into SHA256SUMS): `compare` met 'io' as a list, 'target' as
    a string or an input named 5 as internal errors (KeyError, AttributeError; exit 3). run.py checks
    the same (templates/run.py.j2: checked_manifest)."""
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: is not a JSON object; rebuild the bundle")
    for key in ("eval", "io", "target", "source", "backend_settings"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise UserError(f"{path}: '{key}' must be a mapping; rebuild the bundle")
    for kind in ("inputs", "outputs"):
        specs = (manifest.get("io") or {}).get(kind, [])
        if not (isinstance(specs, list) and all(isinstance(spec, dict) for spec in specs)):
            raise UserError(f"{path}: 'io.{kind}' must be a list of mappings; rebuild the bundle")
        for spec in specs:
            problem = _io_spec_problem(spec)
            if problem:
                raise UserError(f"{path}: 'io.{kind}' entry {str(spec.get('name'))[:80]!r}: {problem}; rebuild the bundle")
    for key, value in (("model", manifest.get("model")), ("compare_model", manifest.get("compare_model")),
                       ("eval.file", (manifest.get("eval") or {}).get("file"))):
        if value is not None and not (isinstance(value, str) and value):
            raise UserError(f"{path}: '{key}' is {str(value)[:80]!r}, not a file name; rebuild the bundle")
    return manifest


def _io_spec_problem(spec: dict) -> str | None:
    if not isinstance(spec.get("name"), str):
        return "'name' is not a string"
    if spec.get("dtype") is not None and not _numeric_dtype(spec["dtype"]):
        return f"'dtype' {str(spec['dtype'])[:40]!r} is not a numeric tensor type"
    shape = spec.get("shape")
    if shape is not None and not (isinstance(shape, list) and all(type(d) in (int, str) or d is None for d in shape)):
        return "'shape' is not a list of integers"
    quant = spec.get("quantization")
    if quant is not None and not (isinstance(quant, dict) and all(
            type(quant.get(k, 0)) in (int, float) for k in ("scale", "zero_point"))):
        return "'quantization' is not a mapping of numbers"
    return None


def read_sha256sums(path: Path) -> dict[str, str]:
    sums = {}
    for line in read_text_bounded(path, JSON_MAX_BYTES, SHA256SUMS).splitlines():
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
    if sums_path.is_symlink() or not sums_path.is_file():
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
    try:
        generated = device_generated_names(manifest)
    except UserError as exc:
        problems.append(str(exc))
        generated = set()
    for rel, kind in walk_entries(root):
        if rel in (MANIFEST, SHA256SUMS) or rel in listed:
            continue
        if kind != "file":
            problems.append(f"{rel}: a link or special file; bundles hold regular files only")
        elif rel not in generated:
            problems.append(f"{rel}: extra file not listed in the manifest")
    if (root / REPORT_DIR).is_symlink():
        problems.append(f"{REPORT_DIR}: a link; results must stay inside the bundle")
    return problems


def _check_file(root: Path, rel: str, entry: dict) -> list[str]:
    path = root / rel
    if path.is_symlink():
        return [f"{rel}: is a symlink"]
    if not path.exists():
        return [f"{rel}: missing"]
    if not path.is_file():
        return [f"{rel}: not a regular file"]
    size = path.stat().st_size
    if size != entry.get("size"):
        return [f"{rel}: size {size} bytes, manifest says {entry.get('size')} (modified)"]
    if sha256_file(path) != entry.get("sha256"):
        return [f"{rel}: sha256 mismatch (modified)"]
    return []


def verified_file_count(path: Path) -> int:
    return len(load_manifest(Path(path))["files"]) + 1  # + manifest.json itself (SHA256SUMS)
