"""Where int8 time goes in XNNPACK, by the microkernel that spends it: corpus models built for
arm-cpu and a few one-op cases, int8 against fp32, with and without the host's AMX tiles.

Why: arm_op_profile.py times graph prefixes, which says which ops cost what but not why; the
int8 / fp32 ratio of a depthwise-heavy model depends on the kernels XNNPACK picks for the host's
CPU, which no flag of the .tflite file chooses (src/configs/*-config.c: on x86 with AVX-512 every
int8 depthwise conv runs `qs8_qc8w_dwconv_*_avx512skx_mul32`; on a CPU with AMX-INT8 every int8
conv / fully-connected layer runs the 16x64 AMX tile kernel, which requantizes a whole 16-row x
64-column tile whatever the layer's output channels; without AMX the 7x16 VNNI kernel). Each
file runs in a child process: timing (thread CPU time, int8 and fp32 in alternating rounds, as
arm_op_profile.py) and, where `perf` exists, `perf record` of an invoke loop whose samples in
LiteRT's library are grouped by microkernel family; a family's time is its share of the samples
times the invoke time. `amx denied`: the child refuses itself the AMX tile permission
(arch_prctl ARCH_REQ_XCOMP_PERM fails under a seccomp filter), so XNNPACK takes the path it takes
on an AVX-512 VNNI host without AMX; only on a host with amx_int8.

    python benchmarks/arm_kernel_profile.py [--models ocr_cls,timm_mobilenetv3] [--rounds 7]

Writes benchmarks/results/arm_kernel_profile.json (host CPU features and load with it).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import cpu_features, load_average, rounds_argument  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "arm_kernel_profile.json"
DEFAULT_MODELS = ["ocr_cls", "timm_mobilenetv3"]
PERF_SECONDS, PERF_HZ = 3.0, 4000
LITERT_LIBRARY = "libpywrap_litert_common.so"
# microkernel name pattern -> family (first match wins; names as XNNPACK's src/ tree spells them)
FAMILIES = [
    (r"dwconv", "depthwise conv"),
    (r"amx", "conv / dense (AMX tiles)"),
    (r"q[su]8.*i?gemm|vnni", "conv / dense (int8 VNNI / AVX-512)"),
    (r"f32.*i?gemm", "conv / dense (fp32)"),
    (r"_lut_", "int8 elementwise chain (lookup table)"),
    (r"vcvt", "QUANTIZE / DEQUANTIZE"),
    (r"q[su]8_v(add|mul)", "int8 ADD / MUL (two tensors)"),
    (r"f32_v", "fp32 elementwise"),
    (r"r(d)?sum|reduce|rmax", "MEAN / reductions"),
    (r"maxpool|avgpool|gavgpool", "pooling"),
    (r"", "other (operator setup, copies, threadpool)"),
]


def deny_amx() -> None:
    """A seccomp filter that fails arch_prctl(ARCH_REQ_XCOMP_PERM): XNNPACK's hardware config then
    logs "TMUL usage is not allowed" and picks the VNNI kernels (x86-64 Linux only)."""
    arch_x86_64, arch_prctl, req_xcomp_perm = 0xC000003E, 158, 0x1023
    program = [(0x20, 0, 0, 4), (0x15, 0, 5, arch_x86_64),  # load arch; not x86-64: allow
               (0x20, 0, 0, 0), (0x15, 0, 3, arch_prctl),  # load syscall number
               (0x20, 0, 0, 16), (0x15, 0, 1, req_xcomp_perm),  # load args[0]
               (0x06, 0, 0, 0x00050000 | 1),  # SECCOMP_RET_ERRNO | EPERM
               (0x06, 0, 0, 0x7FFF0000)]  # SECCOMP_RET_ALLOW
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *step) for step in program))

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(Program(len(program), ctypes.addressof(code))),
                                                 0, 0):  # PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP filter
        raise OSError(ctypes.get_errno(), "seccomp filter refused")


def worker(args) -> None:
    """Child: time the files (thread CPU ms, alternating rounds), or loop one file for perf."""
    if args.mode == "amx denied":
        deny_amx()
    from benchmarks.arm_op_profile import cpu_medians

    if args.loop:
        from benchmarks.arm_speed import feed_for
        from edgepipe.backends.tflite.runtime import make_interpreter

        interpreter = make_interpreter(Path(args.files[0]), "xnnpack", 1)
        feed_for(interpreter)
        for _ in range(20):
            interpreter.invoke()
        start = time.clock_gettime(time.CLOCK_MONOTONIC)
        print(json.dumps({"loop_start": start}), flush=True)
        while time.clock_gettime(time.CLOCK_MONOTONIC) - start < args.loop:
            interpreter.invoke()
        return
    print(json.dumps({"ms": cpu_medians([Path(f) for f in args.files], args.rounds)}), flush=True)


def child(mode: str, files: list[Path], rounds: int = 3, loop: float = 0.0, prefix: list[str] = ()) -> dict:
    command = [*prefix, sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", mode,
               "--rounds", str(rounds), "--loop", str(loop), *map(str, files)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{mode} worker failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return json.loads(lines[-1])


def family(symbol: str) -> str:
    return next(name for pattern, name in FAMILIES if re.search(pattern, symbol))


def kernel_shares(mode: str, path: Path, work: Path) -> dict | None:
    """Samples of LiteRT's library in an invoke loop, by microkernel: {symbol: share}."""
    if not shutil.which("perf"):
        return None
    data = work / "perf.data"
    started = child(mode, [path], loop=PERF_SECONDS, prefix=["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-F",
                                                            str(PERF_HZ), "-o", str(data), "--"])["loop_start"]
    report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-q", "--no-children", "--sort", "dso,sym",
                             "--time", f"{started:.6f},", "--percent-limit", "0"],
                            capture_output=True, text=True, timeout=600)
    shares: dict[str, float] = {}
    for line in report.stdout.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[\.\]\s+(\S+)", line)
        if match and match.group(2) == LITERT_LIBRARY:
            shares[match.group(3)] = shares.get(match.group(3), 0.0) + float(match.group(1))
    total = sum(shares.values())
    return {symbol: value / total for symbol, value in shares.items()} if total else None


def by_family(shares: dict | None, invoke_us: float) -> dict:
    families: dict[str, float] = {}
    for symbol, share in (shares or {}).items():
        families[family(symbol)] = families.get(family(symbol), 0.0) + share * invoke_us
    return {name: round(us, 2) for name, us in sorted(families.items(), key=lambda item: -item[1])}


def profile_pair(int8: Path, fp32: Path, modes: list[str], rounds: int, work: Path) -> dict:
    rows = {}
    for mode in modes:
        int8_ms, fp32_ms = child(mode, [int8, fp32], rounds)["ms"]
        row = {"int8_us": round(1000 * int8_ms, 2), "fp32_us": round(1000 * fp32_ms, 2),
               "int8_over_fp32": round(int8_ms / fp32_ms, 3), "loadavg": load_average()}
        shares = {"int8": kernel_shares(mode, int8, work), "fp32": kernel_shares(mode, fp32, work)}
        if shares["int8"] and shares["fp32"]:
            families = {dtype: by_family(shares[dtype], row[f"{dtype}_us"]) for dtype in ("int8", "fp32")}
            row["families_us"] = {name: {dtype: families[dtype].get(name, 0.0) for dtype in ("int8", "fp32")}
                                  for name in dict.fromkeys([*families["int8"], *families["fp32"]])}
            row["kernels_int8"] = {symbol: round(share, 4) for symbol, share in
                                   sorted(shares["int8"].items(), key=lambda item: -item[1]) if share >= 0.01}
            row["kernels_fp32"] = {symbol: round(share, 4) for symbol, share in
                                   sorted(shares["fp32"].items(), key=lambda item: -item[1]) if share >= 0.01}
        rows[mode] = row
        print(f"  {mode}: {json.dumps({k: v for k, v in row.items() if not k.startswith('kernels')})}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--cases", default="", help="comma-separated one-op cases (names in CASES below)")
    parser.add_argument("--rounds", type=rounds_argument, default=7, help="alternating rounds (median), >= 3")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--loop", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from benchmarks.arm_speed import build, chosen_models
    from benchmarks.kernel_cases import CASES
    from tests.realmodels import corpus

    host = cpu_features()
    modes = ["default", "amx denied"] if host["flags"].get("amx_int8") else ["default"]
    names = chosen_models(parser, args.models) if args.models else []
    cases = [case for case in args.cases.split(",") if case]
    unknown = [case for case in cases if case not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown} (choose from {list(CASES)})")
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if previous.get("host") != host:  # rows from another CPU are not this host's figures
        previous = {}
    result = {"models": previous.get("models", {}), "cases": previous.get("cases", {})}
    corpus.fetch_all()
    with tempfile.TemporaryDirectory(prefix="arm-kernel-profile-") as tmp:
        work = Path(tmp)
        for name in names:
            print(name, flush=True)
            bundle, row = build(name, work)
            if bundle is not None:
                row["modes"] = profile_pair(bundle / "model.tflite", bundle / "model.fp32.tflite", modes, args.rounds,
                                            work)
            result["models"][name] = row
        for case in cases:
            print(case, flush=True)
            paths = []
            for dtype in ("int8", "float32"):
                paths.append(work / f"case_{dtype}.tflite")
                paths[-1].write_bytes(CASES[case](dtype))
            result["cases"][case] = profile_pair(*paths, modes, args.rounds, work)
    import ai_edge_litert

    RESULTS.write_text(json.dumps({"host": host, "litert": getattr(ai_edge_litert, "__version__", "?"), "threads": 1,
                                   "rounds": args.rounds, "timer": "thread CPU time", "modes": modes, **result},
                                  indent=1, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
