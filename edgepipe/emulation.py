"""Run Python (and a .tflite) on real arm64 instructions, emulated by qemu-aarch64 on an x86 host.

Why: the arm-cpu bundle's int8 .tflite is checked on the host with x86 LiteRT, but devices run
ARM kernels (NEON / dot-product int8 paths) that the host never executes. This module builds a
minimal arm64 Debian bookworm userland (python3, numpy, the aarch64 `ai-edge-litert` wheel) and
runs a script in it with `qemu-aarch64-static -L ROOTFS`, so a test can compare ARM outputs with
x86 outputs on the same inputs. No binfmt_misc, no chroot, no mounts: `-L` makes the emulated
program see ROOTFS first and the host for anything ROOTFS lacks (/dev, /sys, /tmp files).

What to expect (measured on an x86 build host with qemu 7.2):
- x86 and ARM int8 kernels may legitimately round a few values differently: compare argmax and
  "within one quantization step", never bit equality. Float models with XNNPACK agree to ~1e-6.
- The emulated CPU is pinned (`QEMU_CPU=neoverse-n1`) and a matching arm64 `/proc/cpuinfo` is
  planted in ROOTFS: LiteRT 2.3 parses cpuinfo (the host's x86 one makes it segfault), and qemu
  7.2's default `max` CPU gave wrong int8 results.
- Emulated latency is meaningless (kernels run orders of magnitude slower, each Python start takes seconds):
  never report it. Run all checks in one emulated process.

The rootfs is built once per machine (it takes a minute or so, needs root, debootstrap and network access to the
Debian mirror and PyPI) and cached as a directory under `$EDGEPIPE_CACHE` (default
`~/.cache/edgepipe`) named by a key of everything that goes into it. It is built in a temporary
sibling directory and renamed into place only when complete, so an interrupted build is never
reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from edgepipe.cache_trust import user_cache_root

SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-numpy")
# Wheels unpacked into the rootfs (aarch64, cp311). tflite-runtime 2.14 is a second, independent
# ARM kernel build (no int8 XNNPACK delegation); bookworm's numpy 1.24 satisfies its numpy<2.
WHEELS = ("ai-edge-litert==2.3.0", "tflite-runtime==2.14.0")
WHEEL_PLATFORMS = ("manylinux_2_36_aarch64", "manylinux_2_34_aarch64", "manylinux_2_28_aarch64",
                   "manylinux_2_27_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64")
QEMU = "qemu-aarch64-static"
QEMU_CPU = "neoverse-n1"
CPU_COUNT = 4  # cores claimed by the planted cpuinfo (fixed, so the cached rootfs is portable)
LAYOUT = 2  # bump when the build steps change
PRUNE = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/lib/apt/lists",
         "var/cache/apt", "debootstrap")  # not needed to run python3 (~100 MB)
STALE_PARTIAL_S = 3600  # a partial build this old was interrupted; remove it
MARKER = ".edgepipe-rootfs"
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"

NEOVERSE_N1_CORE = """processor\t: {n}
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

"""


def mirror() -> str:
    return os.environ.get("EDGEPIPE_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def cpuinfo_text() -> str:
    return "".join(NEOVERSE_N1_CORE.format(n=n) for n in range(CPU_COUNT))


def version_key() -> str:
    """Everything that changes the rootfs contents; part of the cache directory name."""
    ingredients = [str(LAYOUT), SUITE, "arm64", *DEBIAN_PACKAGES, *WHEELS, cpuinfo_text()]
    return hashlib.sha256("\n".join(ingredients).encode()).hexdigest()[:12]


def cache_root() -> Path:
    return user_cache_root()


def rootfs_path() -> Path:
    return cache_root() / f"arm64-rootfs-{SUITE}-{version_key()}"


def cached_rootfs() -> Path | None:
    """The complete cached rootfs, or None (a directory without the marker is not complete)."""
    path = rootfs_path()
    return path if (path / MARKER).is_file() else None


def available() -> str | None:
    """None when `ensure_rootfs` + `run_in_arm64` can work here, else the reason they cannot."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found (apt-get install qemu-user-static)"
    if cached_rootfs() is not None:
        return None
    for tool, package in (("debootstrap", "debootstrap"), ("dpkg-deb", "dpkg"), ("tar", "tar")):
        if shutil.which(tool) is None:
            return f"{tool} not found and no cached arm64 rootfs (apt-get install {package})"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "building the arm64 rootfs needs root (debootstrap) and none is cached at " + str(rootfs_path())
    try:
        import pip  # noqa: F401
    except ImportError:
        return "pip is not importable (needed to download the aarch64 wheels)"
    url = urlparse(mirror())
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as exc:
        return f"no network access to the Debian mirror {mirror()} for debootstrap ({exc})"
    return None


def ensure_rootfs(log=print) -> Path:
    """The cached arm64 rootfs, built first if missing. Raises RuntimeError if a step fails."""
    found = cached_rootfs()
    if found is not None:
        return found
    final = rootfs_path()
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        if time.time() - stale.stat().st_mtime > STALE_PARTIAL_S:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        started = time.monotonic()
        _build(tmp, log)
        (tmp / MARKER).write_text(f"key {version_key()}\nsuite {SUITE}\nwheels {' '.join(WHEELS)}\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if cached_rootfs() is None:  # not a concurrent builder that won the race
                if final.exists():  # an unmarked leftover: replace it
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
                else:
                    raise
        log(f"arm64 rootfs ready in {time.monotonic() - started:.0f} s: {final}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _run(cmd: list[str], what: str, **kwargs) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-2000:]
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n{tail}")


def _build(root: Path, log) -> None:
    log(f"debootstrap (foreign, arm64, {SUITE}) into {root} ...")
    _run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
          f"--include={','.join(DEBIAN_PACKAGES)}", SUITE, str(root), mirror()], "debootstrap", timeout=900)

    # The foreign first stage leaves most packages packed; unpack them all (maintainer scripts
    # never run, which is fine for running python3).
    debs = sorted((root / "var/cache/apt/archives").glob("*.deb"))
    log(f"unpacking {len(debs)} .debs ...")
    for deb in debs:
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as dpkg:
            tar = subprocess.run(["tar", "-C", str(root), "--keep-directory-symlink", "-xf", "-"],
                                 stdin=dpkg.stdout, capture_output=True)
            dpkg.stdout.close()
        if dpkg.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"unpacking {deb.name} failed: {tar.stderr.decode(errors='replace')[-500:]}")
        deb.unlink()

    # Alternatives symlinks normally made by update-alternatives in postinst.
    libdir = root / "usr/lib/aarch64-linux-gnu"
    for link, target in (("libblas.so.3", "blas/libblas.so.3"), ("liblapack.so.3", "lapack/liblapack.so.3")):
        if not (libdir / target).exists():
            raise RuntimeError(f"{target} missing in the rootfs: python3-numpy dependencies not unpacked")
        if not (libdir / link).exists():
            (libdir / link).symlink_to(target)

    log(f"downloading aarch64 wheels: {' '.join(WHEELS)} ...")
    wheel_dir = root / "tmp/edgepipe-wheels"
    wheel_dir.mkdir(parents=True)
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", "3.11",
          "--no-deps", *platforms, "-d", str(wheel_dir), *WHEELS], "pip download", timeout=600)
    site = root / SITE_PACKAGES
    site.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(wheel_dir.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                zf.extract(info, site)
                mode = info.external_attr >> 16
                if mode & 0o111:  # zipfile drops permissions; keep shared objects executable
                    os.chmod(site / info.filename, mode & 0o777)
    shutil.rmtree(wheel_dir)

    # `-L ROOTFS` serves ROOTFS/proc/cpuinfo instead of the host's x86 one; everything else under
    # /proc, and /dev, fall through to the host because ROOTFS lacks them.
    proc = root / "proc"
    if proc.is_symlink() or proc.is_file():
        proc.unlink()
    elif proc.is_dir():
        shutil.rmtree(proc)
    proc.mkdir()
    (proc / "cpuinfo").write_text(cpuinfo_text())
    dev = root / "dev"
    if dev.is_dir() and not dev.is_symlink():
        shutil.rmtree(dev)
        dev.mkdir()
    for path in PRUNE:
        shutil.rmtree(root / path, ignore_errors=True)


def arm64_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for the emulated process (no host PYTHONPATH etc. leaking in)."""
    env = {"QEMU_CPU": QEMU_CPU, "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(extra or {})
    return env


def run_in_arm64(rootfs: Path, script_path, args=(), cwd=None, timeout: float = 600,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python3 SCRIPT ARGS...` on emulated arm64 in ROOTFS; text output captured.

    Host paths (the script, its inputs and outputs) are visible to the emulated process as long
    as ROOTFS has no file at the same path.
    """
    python = Path(rootfs) / "usr/bin/python3.11"
    cmd = [QEMU, "-L", str(rootfs), str(python), str(script_path), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=arm64_env(env), capture_output=True, text=True, timeout=timeout)
