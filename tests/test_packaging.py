"""The installed wheel carries everything the tool needs: targets/, templates/, the demo.

Builds a real wheel, installs it into a temp dir (no editable checkout on the path first), and
runs the CLI from an unrelated directory.
"""

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
        # Data-only folders with importable names (setuptools warns about each one left out).
        tracked = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True).stdout
        for name in tracked.split():
            relative = Path(name).parent.relative_to(folder)
            for depth in range(1, len(relative.parts) + 1):
                if all(part.isidentifier() for part in relative.parts[:depth]):
                    found.add(".".join([package, *relative.parts[:depth]]))
    assert found == listed, f"pyproject packages differ: missing {found - listed}, stale {listed - found}"


def tracked_tree_copy(dest: Path) -> Path:
    """Copy what git tracks (plus untracked, unignored files), so stale build/ output never leaks in."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    source = tracked_tree_copy(tmp_path_factory.mktemp("source"))
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check",
                            "--outdir", str(dist), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    # A user's `pip install` shows the build backend's warnings: none about left-out folders.
    assert "would be ignored" not in built.stdout + built.stderr, (built.stdout + built.stderr)[-2000:]
    wheel = next(dist.glob("edgepipe-*.whl"))
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    return wheel, site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "edgepipe", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_wheel_contains_data_files(installed_wheel):
    wheel, _ = installed_wheel
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("edgepipe_templates/") and n.endswith(".j2") for n in names)
    assert any(n.startswith("edgepipe_targets/profiles/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("edgepipe_calibration_sets/demo/") and n.endswith(".png") for n in names)
    assert "edgepipe/demo/demo_cnn.pt" in names


def test_installed_cli_builds_demo_from_another_directory(installed_wheel, tmp_path):
    _, site = installed_wheel
    probe = subprocess.run([sys.executable, "-c", "import edgepipe, edgepipe_templates; print(edgepipe.__file__); print(edgepipe_templates.__file__)"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert all(line.startswith(str(site)) for line in probe.stdout.split()), probe.stdout
    result = run_installed(site, tmp_path, "targets")
    assert result.returncode == 0 and "arm-cpu" in result.stdout
    result = run_installed(site, tmp_path, "build", "--target", "jetson", "--json")
    assert result.returncode == 0, result.stderr
    bundle = tmp_path / "build" / "jetson"
    assert (bundle / "manifest.json").exists() and (bundle / "model.qdq.onnx").exists()
