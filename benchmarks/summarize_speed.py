"""summarize.py's renderer for the per-microkernel profile (benchmarks/arm_kernel_profile.py).

Why its own module: summarize.py is at its size limit; this table has its own layout (one row
per model or case and XNNPACK path, the kernel families' split).
"""

from __future__ import annotations

from summarize_format import fmt


def arm_kernel_profile(data: dict) -> list[str]:
    host = data["host"]
    features = ", ".join(flag for flag, present in host["flags"].items() if present) or "none of the listed"
    lines = [f"Host {host['machine']} ({host['cpu']}), {host['cores']} shared cores; CPU features: {features}. "
             f"LiteRT {data['litert']}, XNNPACK, {data['threads']} thread; int8 and fp32 timed in "
             f"{data['rounds']} alternating rounds ({data['timer']}, median of round medians); a kernel family's "
             "time is its share of `perf` samples in LiteRT's library during an invoke loop times the invoke "
             "time. `amx denied`: the process refused AMX tile permission, so XNNPACK runs the AVX-512 VNNI "
             "kernels.", "",
             "| model / case | path | int8 us | fp32 us | int8/fp32 | kernel families, int8 us / fp32 us |",
             "|---|---|---|---|---|---|"]
    rows = [*data.get("models", {}).items(), *data.get("cases", {}).items()]
    for name, row in rows:
        modes = row.get("modes", row)
        if "error" in row:
            lines.append(f"| {name} | build failed: {row['error']} | | | | |")
            continue
        for mode in sorted(modes, key=lambda mode: mode != "default"):  # XNNPACK's own choice first
            measured = modes[mode]
            families = sorted(measured.get("families_us", {}).items(), key=lambda item: -max(item[1].values()))
            split = "; ".join(f"{family} {fmt(us['int8'], 1)} / {fmt(us['fp32'], 1)}" for family, us in
                              families if max(us["int8"], us["fp32"]) >= 1.0) or "-"
            lines.append(f"| {name} | {mode} | {fmt(measured['int8_us'], 1)} | {fmt(measured['fp32_us'], 1)} | "
                         f"{fmt(measured['int8_over_fp32'], 2)} | {split} |")
    return lines
