"""Are the bundles of an earlier commit and of this checkout byte-identical? Three builds each:
the PP-OCRv4 recognizer for jetson (the file as shipped, calibration_real_models.py's 64 lines),
the demo for jetson and the demo for arm-cpu.

Why: a speed-up of the build that claims to change no value is checked on every file it writes,
not on the three calibration files calibration_ab.py hashes: every file of every bundle is
hashed, and each build's summary (`--json`: stability, bias-correction report, warnings, stage
notes and hashes) is compared with its timings left out and its paths (the project folder, the
edgepipe tree) replaced by placeholders. Each build is a fresh `python -m edgepipe build` in a
fresh project folder, the earlier commit a `git archive` first on PYTHONPATH (calibration_ab.py).

Run by hand:  python benchmarks/bundle_identity.py --before 0a33d48
Writes benchmarks/results/bundle_identity.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import calibration_real_models  # noqa: E402
import real_models  # noqa: E402
from calibration_ab import MODEL, export_commit  # noqa: E402

TIMING_KEYS = frozenset({"seconds"})


def build_arguments(scratch: Path) -> dict[str, list[str]]:
    rec = ["--model", str(real_models.raw_model_path(MODEL)), "--target", "jetson", "--calib",
           str(scratch / f"{MODEL}_calib.npz"), "--calib-method", "auto", *real_models.input_shape_args(MODEL)]
    return {"rec": rec, "demo_j": ["--target", "jetson"], "demo_a": ["--target", "arm-cpu"]}


def comparable(value, replacements: dict[str, str]):
    """The summary without timings, with machine-specific paths replaced."""
    if isinstance(value, dict):
        return {k: comparable(v, replacements) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [comparable(v, replacements) for v in value]
    if isinstance(value, str):
        for path, placeholder in replacements.items():
            value = value.replace(path, placeholder)
    return value


def differences(a, b, where: str = "") -> list[str]:
    """Paths (build/key/index) at which two comparable summaries differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys()) for d in differences(a.get(k), b.get(k), f"{where}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for k, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}/{k}")]
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"[:300]]


def build_all(tree: Path, label: str, scratch: Path) -> tuple[dict, dict]:
    """(sha256 of every bundle file by 'build/relative path', comparable summary per build)."""
    files, summaries = {}, {}
    for name, args in build_arguments(scratch).items():
        project = scratch / label / name
        (project / "tmp").mkdir(parents=True)
        env = {**os.environ, "PYTHONPATH": str(tree), "TMPDIR": str(project / "tmp")}
        proc = subprocess.run([sys.executable, "-m", "edgepipe", "build", *args, "--no-host-report", "--json",
                               "--out", "bundle"], cwd=project, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{label} {name}: " + (proc.stderr.strip().splitlines() or ["build failed"])[-1])
        summary = json.loads(proc.stdout[proc.stdout.index("{"):])
        summaries[name] = comparable(summary, {str(project): "<project>",  # the archive's package-dir link:
                                               str(tree / "edgepipe_calibration_sets"): "<edgepipe>/calibration_sets",
                                               str(tree): "<edgepipe>"})
        for path in sorted((project / "bundle").rglob("*")):
            if path.is_file():
                files[f"{name}/{path.relative_to(project)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files, summaries


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="git commit of the earlier version")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/bundle_identity.json"))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bundle_identity_"))
    calibration_real_models.prepare(scratch, MODEL)

    def short(commit: str) -> str:
        return subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()

    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    sides = {"before": (export_commit(args.before, scratch), short(args.before)),
             "after": (ROOT, short("HEAD") + ("+uncommitted" if dirty else ""))}
    report = {"what": "sha256 of every file of three bundles built by an earlier commit and by this checkout, each "
                      "in a fresh project folder, plus the build summaries (--json) without timings and paths",
              "builds": {name: "edgepipe build " + " ".join(a) + " --no-host-report --json"
                         for name, a in build_arguments(Path("<scratch>")).items()}}
    results = {}
    for side, (tree, commit) in sides.items():
        files, summaries = build_all(tree, side, scratch)
        results[side] = (files, summaries)
        digest = hashlib.sha256(json.dumps(summaries, sort_keys=True).encode()).hexdigest()
        report[side] = {"commit": commit, "files": files, "summaries_sha256": digest}
    (before_files, before_summaries), (after_files, after_summaries) = results["before"], results["after"]
    report["identical_files"] = before_files == after_files
    report["different_files"] = sorted(k for k in before_files.keys() | after_files.keys()
                                       if before_files.get(k) != after_files.get(k))
    report["identical_summaries"] = before_summaries == after_summaries
    report["summary_differences"] = differences(before_summaries, after_summaries)
    report["files_compared"] = len(after_files)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"identical files: {report['identical_files']} ({len(after_files)} compared, different: "
          f"{report['different_files']}); identical summaries: {report['identical_summaries']}; wrote {args.out}")


if __name__ == "__main__":
    main()
