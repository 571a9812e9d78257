"""Inline SVG charts for report.html: no matplotlib, no JavaScript, no external files.

A report is opened from a CI artifact or a device folder, often offline, so every chart is a
small self-contained `<svg>` string. Every piece of text (tensor names come from user models)
is escaped here; the functions return `markupsafe.Markup` so the template inserts them as is.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from markupsafe import Markup, escape

PALETTE = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#e53e3e")
_FONT = 'font-family="sans-serif" font-size="11"'


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _label(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    return f"{value:.3g}"


class _Canvas:
    """A fixed-size plot area with margins and linear x/y scales."""

    def __init__(self, title: str, width=560, height=240, left=56, right=16, top=28, bottom=48):
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = left, right, top, bottom
        self.parts = [f'<text x="{width / 2}" y="16" text-anchor="middle" {_FONT} font-weight="bold">'
                      f"{escape(title)}</text>"]

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def x(self, fraction: float) -> float:
        return self.left + fraction * self.plot_w

    def y(self, fraction: float) -> float:
        return self.top + (1.0 - fraction) * self.plot_h

    def add(self, element: str) -> None:
        self.parts.append(element)

    def axes(self, y_max: float, y_label: str = "", ticks: int = 4) -> None:
        self.add(f'<line x1="{self.left}" y1="{_num(self.y(0))}" x2="{_num(self.x(1))}" y2="{_num(self.y(0))}" stroke="#333"/>')
        self.add(f'<line x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{_num(self.y(0))}" stroke="#333"/>')
        for i in range(ticks + 1):
            frac = i / ticks
            self.add(f'<line x1="{self.left - 4}" y1="{_num(self.y(frac))}" x2="{_num(self.x(1))}" '
                     f'y2="{_num(self.y(frac))}" stroke="#ddd"/>')
            self.add(f'<text x="{self.left - 6}" y="{_num(self.y(frac) + 4)}" text-anchor="end" {_FONT}>'
                     f"{_label(y_max * frac)}</text>")
        if y_label:
            self.add(f'<text x="12" y="{_num(self.y(0.5))}" transform="rotate(-90 12 {_num(self.y(0.5))})" '
                     f'text-anchor="middle" {_FONT}>{escape(y_label)}</text>')

    def render(self, aria: str) -> Markup:
        body = "".join(self.parts)
        return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(aria)}" '
                      f'width="{self.width}" height="{self.height}" viewBox="0 0 {self.width} {self.height}">'
                      f"{body}</svg>")


def histogram(edges: Sequence[float], counts: Sequence[float], title: str, x_label: str = "",
              markers: Sequence[tuple[float, str]] = ()) -> Markup:
    """Bars for a binned distribution, with optional labelled vertical lines (thresholds)."""
    edges = [float(e) for e in edges]
    counts = [float(c) for c in counts]
    canvas = _Canvas(title)
    lo = min([edges[0]] + [m for m, _ in markers])
    hi = max([edges[-1]] + [m for m, _ in markers])
    span = (hi - lo) or 1.0
    peak = max(counts) if counts and max(counts) > 0 else 1.0
    canvas.axes(peak, "count")
    for left, right, count in zip(edges[:-1], edges[1:], counts):
        x0, x1 = canvas.x((left - lo) / span), canvas.x((right - lo) / span)
        top = canvas.y(count / peak)
        canvas.add(f'<rect x="{_num(x0)}" y="{_num(top)}" width="{_num(max(x1 - x0 - 0.5, 0.5))}" '
                   f'height="{_num(canvas.y(0) - top)}" fill="{PALETTE[0]}"/>')
    for index, (value, text) in enumerate(markers):
        x = canvas.x((value - lo) / span)
        canvas.add(f'<line x1="{_num(x)}" y1="{canvas.top}" x2="{_num(x)}" y2="{_num(canvas.y(0))}" '
                   f'stroke="{PALETTE[4]}" stroke-dasharray="4 3"/>')
        canvas.add(f'<text x="{_num(x + 3)}" y="{canvas.top + 12 + 12 * (index % 2)}" {_FONT} '
                   f'fill="{PALETTE[4]}">{escape(text)}</text>')
    for frac in (0.0, 0.5, 1.0):
        canvas.add(f'<text x="{_num(canvas.x(frac))}" y="{_num(canvas.y(0) + 14)}" text-anchor="middle" '
                   f"{_FONT}>{_label(lo + frac * span)}</text>")
    if x_label:
        canvas.add(f'<text x="{_num(canvas.x(0.5))}" y="{canvas.height - 8}" text-anchor="middle" {_FONT}>'
                   f"{escape(x_label)}</text>")
    return canvas.render(title)


def latency_histogram(latencies_ms: Sequence[float], percentiles: dict, bins: int = 30) -> Markup:
    values = np.asarray(latencies_ms, dtype=np.float64)
    top = float(np.percentile(values, 99.5))  # a few scheduler hiccups would squash every bar
    if top <= values.min():
        top = float(values.max())
    counts, edges = np.histogram(np.minimum(values, top), bins=bins, range=(float(values.min()), top))
    markers = [(float(percentiles[p]), p) for p in ("p50", "p99") if percentiles.get(p) is not None]
    return histogram(edges.tolist(), counts.tolist(), "Latency per inference", "milliseconds", markers)


def bar_chart(title: str, categories: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
              y_max: float | None = None, y_label: str = "") -> Markup:
    """Grouped vertical bars: one group per category, one bar per series (None = no bar)."""
    canvas = _Canvas(title)
    finite = [v for _, values in series for v in values if v is not None and math.isfinite(v)]
    top = y_max or (max(finite) * 1.1 if finite and max(finite) > 0 else 1.0)
    canvas.axes(top, y_label)
    group_w = canvas.plot_w / max(len(categories), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for gi, category in enumerate(categories):
        for si, (_, values) in enumerate(series):
            value = values[gi]
            if value is None or not math.isfinite(value):
                continue
            x = canvas.left + gi * group_w + group_w * 0.1 + si * bar_w
            y = canvas.y(min(max(value, 0.0), top) / top)
            canvas.add(f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(bar_w - 2)}" height="{_num(canvas.y(0) - y)}" '
                       f'fill="{PALETTE[si % len(PALETTE)]}"><title>{escape(category)}: {_label(value)}</title></rect>')
            canvas.add(f'<text x="{_num(x + bar_w / 2)}" y="{_num(y - 3)}" text-anchor="middle" {_FONT}>'
                       f"{_label(value)}</text>")
        canvas.add(f'<text x="{_num(canvas.left + (gi + 0.5) * group_w)}" y="{_num(canvas.y(0) + 14)}" '
                   f'text-anchor="middle" {_FONT}>{escape(category)}</text>')
    for si, (name, _) in enumerate(series):
        x = canvas.left + 8 + si * 130
        canvas.add(f'<rect x="{x}" y="{canvas.height - 16}" width="10" height="10" fill="{PALETTE[si % len(PALETTE)]}"/>')
        canvas.add(f'<text x="{x + 14}" y="{canvas.height - 7}" {_FONT}>{escape(name)}</text>')
    return canvas.render(title)


def reliability_diagram(bins: Sequence[dict]) -> Markup:
    """Accuracy per confidence bin against the diagonal (perfect calibration)."""
    canvas = _Canvas("Reliability diagram (15 bins)")
    canvas.axes(1.0, "accuracy")
    canvas.add(f'<line x1="{_num(canvas.x(0))}" y1="{_num(canvas.y(0))}" x2="{_num(canvas.x(1))}" '
               f'y2="{_num(canvas.y(1))}" stroke="#999" stroke-dasharray="4 3"/>')
    for entry in bins:
        if not entry.get("count") or entry.get("accuracy") is None:
            continue
        x0, x1 = canvas.x(float(entry["lo"])), canvas.x(float(entry["hi"]))
        y = canvas.y(float(entry["accuracy"]))
        canvas.add(f'<rect x="{_num(x0)}" y="{_num(y)}" width="{_num(max(x1 - x0 - 1, 0.5))}" '
                   f'height="{_num(canvas.y(0) - y)}" fill="{PALETTE[0]}" fill-opacity="0.8">'
                   f'<title>{entry["count"]} samples, confidence {_label(float(entry["confidence"]))}</title></rect>')
    for frac in (0.0, 0.5, 1.0):
        canvas.add(f'<text x="{_num(canvas.x(frac))}" y="{_num(canvas.y(0) + 14)}" text-anchor="middle" '
                   f"{_FONT}>{_label(frac)}</text>")
    canvas.add(f'<text x="{_num(canvas.x(0.5))}" y="{canvas.height - 8}" text-anchor="middle" {_FONT}>confidence</text>')
    return canvas.render("Reliability diagram")


def horizontal_bars(title: str, labels: Sequence[str], values: Sequence[float], x_label: str = "") -> Markup:
    """One bar per row (e.g. per-layer sensitivity), longest first as given."""
    row_h = 18
    canvas = _Canvas(title, height=40 + row_h * max(len(labels), 1) + 28, left=220)
    finite = [abs(v) for v in values if math.isfinite(v)]
    peak = max(finite) if finite and max(finite) > 0 else 1.0
    for i, (label, value) in enumerate(zip(labels, values)):
        y = canvas.top + i * row_h
        width = canvas.plot_w * (min(abs(value), peak) / peak if math.isfinite(value) else 1.0)
        text = str(label) if len(str(label)) <= 34 else str(label)[:33] + "…"
        canvas.add(f'<text x="{canvas.left - 6}" y="{y + 12}" text-anchor="end" {_FONT}>{escape(text)}</text>')
        canvas.add(f'<rect x="{canvas.left}" y="{y + 2}" width="{_num(max(width, 0.5))}" height="{row_h - 4}" '
                   f'fill="{PALETTE[1]}"><title>{escape(label)}: {_label(value)}</title></rect>')
        canvas.add(f'<text x="{_num(canvas.left + width + 4)}" y="{y + 12}" {_FONT}>{_label(value)}</text>')
    if x_label:
        canvas.add(f'<text x="{_num(canvas.x(0.5))}" y="{canvas.height - 8}" text-anchor="middle" {_FONT}>'
                   f"{escape(x_label)}</text>")
    return canvas.render(title)
