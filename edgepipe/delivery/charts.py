"""Inline SVG charts for report.html: no matplotlib, no JavaScript, no external files.

A report is opened from a CI artifact or a device folder, often offline, so every chart is a
small self-contained `<svg>` string. Every piece of text (tensor names come from user models)
is escaped by `element`, the one function that makes markup; the functions return
`markupsafe.Markup` so the template inserts them as is.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from markupsafe import Markup, escape

PALETTE = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#e53e3e")
_FONT = {"font-family": "sans-serif", "font-size": "11"}


def _num(value: float) -> str:
    value = float(value)
    if not math.isfinite(value):
        return "0"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _label(value: float) -> str:
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    return f"{value:.3g}"


def element(tag: str, text: str | None = None, children: Sequence[Markup] = (), **attributes) -> Markup:
    """One SVG element; every attribute value and the text are escaped here, the only place
    markup is made, so no value from a results.json or a model can open an element of its own.
    Attribute names are ours (keyword arguments; `_` becomes `-`)."""
    attrs = "".join(f' {name.rstrip("_").replace("_", "-")}="{escape(str(value))}"'
                    for name, value in attributes.items() if value is not None)
    body = escape(text) if text is not None else Markup("")
    body += Markup("").join(children)
    return Markup(f"<{tag}{attrs}>{body}</{tag}>")


def _text(content, x, y, anchor: str | None = None, **extra) -> Markup:
    return element("text", str(content), x=_num(x), y=_num(y), text_anchor=anchor,
                   font_family=_FONT["font-family"], font_size=_FONT["font-size"], **extra)


class _Canvas:
    """A fixed-size plot area with margins and linear x/y scales."""

    def __init__(self, title: str, width=560, height=240, left=56, right=16, top=28, bottom=48):
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = left, right, top, bottom
        self.parts = [_text(title, width / 2, 16, "middle", font_weight="bold")]

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

    def add(self, part: Markup) -> None:
        self.parts.append(part)

    def line(self, x1, y1, x2, y2, stroke: str, dashed: bool = False) -> None:
        self.add(element("line", x1=_num(x1), y1=_num(y1), x2=_num(x2), y2=_num(y2), stroke=stroke,
                         stroke_dasharray="4 3" if dashed else None))

    def rect(self, x, y, width, height, fill: str, tooltip: str | None = None, **extra) -> None:
        children = [element("title", tooltip)] if tooltip is not None else []
        self.add(element("rect", children=children, x=_num(x), y=_num(y), width=_num(width),
                         height=_num(height), fill=fill, **extra))

    def axes(self, y_max: float, y_label: str = "", ticks: int = 4) -> None:
        self.line(self.left, self.y(0), self.x(1), self.y(0), "#333")
        self.line(self.left, self.top, self.left, self.y(0), "#333")
        for i in range(ticks + 1):
            frac = i / ticks
            self.line(self.left - 4, self.y(frac), self.x(1), self.y(frac), "#ddd")
            self.add(_text(_label(y_max * frac), self.left - 6, self.y(frac) + 4, "end"))
        if y_label:
            middle = _num(self.y(0.5))
            self.add(_text(y_label, 12, self.y(0.5), "middle", transform=f"rotate(-90 12 {middle})"))

    def render(self, aria: str) -> Markup:
        return element("svg", children=self.parts, xmlns="http://www.w3.org/2000/svg", role="img", aria_label=aria,
                       width=self.width, height=self.height, viewBox=f"0 0 {self.width} {self.height}")


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
        canvas.rect(x0, top, max(x1 - x0 - 0.5, 0.5), canvas.y(0) - top, PALETTE[0])
    for index, (value, text) in enumerate(markers):
        x = canvas.x((value - lo) / span)
        canvas.line(x, canvas.top, x, canvas.y(0), PALETTE[4], dashed=True)
        canvas.add(_text(text, x + 3, canvas.top + 12 + 12 * (index % 2), fill=PALETTE[4]))
    for frac in (0.0, 0.5, 1.0):
        canvas.add(_text(_label(lo + frac * span), canvas.x(frac), canvas.y(0) + 14, "middle"))
    if x_label:
        canvas.add(_text(x_label, canvas.x(0.5), canvas.height - 8, "middle"))
    return canvas.render(title)


def latency_histogram(latencies_ms: Sequence[float], percentiles: dict, bins: int = 30) -> Markup:
    values = np.asarray(latencies_ms, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        values = np.zeros(1)
    top = float(np.percentile(values, 99.5))  # a few scheduler hiccups would squash every bar
    if top <= values.min():
        top = float(values.max())
    low = float(values.min())
    try:
        counts, edges = np.histogram(np.minimum(values, top), bins=bins, range=(low, top))
    except ValueError:  # a span numpy cannot cut into finite bins (1e308 ms in a hand-made results.json)
        counts, edges = np.array([values.size]), np.array([low, top])
    markers = [(float(percentiles[p]), p) for p in ("p50", "p99")
               if isinstance(percentiles.get(p), (int, float)) and math.isfinite(percentiles[p])]
    return histogram(edges.tolist(), counts.tolist(), "Latency per inference", "milliseconds", markers)


def bar_chart(title: str, categories: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
              y_max: float | None = None, y_label: str = "") -> Markup:
    """Grouped vertical bars: one group per category, one bar per series (None = no bar)."""
    canvas = _Canvas(title)
    finite = [float(v) for _, values in series for v in values if v is not None and math.isfinite(v)]
    top = y_max or (max(finite) * 1.1 if finite and max(finite) > 0 else 1.0)
    canvas.axes(top, y_label)
    group_w = canvas.plot_w / max(len(categories), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for gi, category in enumerate(categories):
        for si, (_, values) in enumerate(series):
            value = values[gi]
            if value is None or not math.isfinite(value):
                continue
            value = float(value)
            x = canvas.left + gi * group_w + group_w * 0.1 + si * bar_w
            y = canvas.y(min(max(value, 0.0), top) / top)
            canvas.rect(x, y, bar_w - 2, canvas.y(0) - y, PALETTE[si % len(PALETTE)],
                        tooltip=f"{category}: {_label(value)}")
            canvas.add(_text(_label(value), x + bar_w / 2, y - 3, "middle"))
        canvas.add(_text(category, canvas.left + (gi + 0.5) * group_w, canvas.y(0) + 14, "middle"))
    for si, (name, _) in enumerate(series):
        x = canvas.left + 8 + si * 130
        canvas.rect(x, canvas.height - 16, 10, 10, PALETTE[si % len(PALETTE)])
        canvas.add(_text(name, x + 14, canvas.height - 7))
    return canvas.render(title)


def reliability_diagram(bins: Sequence[dict]) -> Markup:
    """Accuracy per confidence bin against the diagonal (perfect calibration)."""
    canvas = _Canvas("Reliability diagram (15 bins)")
    canvas.axes(1.0, "accuracy")
    canvas.line(canvas.x(0), canvas.y(0), canvas.x(1), canvas.y(1), "#999", dashed=True)
    for entry in bins:
        if not isinstance(entry, dict) or not entry.get("count") or any(
                not isinstance(entry.get(k), (int, float)) or not math.isfinite(entry[k]) for k in ("lo", "hi", "accuracy")):
            continue
        x0, x1 = canvas.x(float(entry["lo"])), canvas.x(float(entry["hi"]))
        y = canvas.y(float(entry["accuracy"]))
        confidence = entry.get("confidence")
        tooltip = f"{_label(entry['count'])} samples, confidence {_label(confidence) if confidence is not None else '-'}"
        canvas.rect(x0, y, max(x1 - x0 - 1, 0.5), canvas.y(0) - y, PALETTE[0], tooltip=tooltip, fill_opacity="0.8")
    for frac in (0.0, 0.5, 1.0):
        canvas.add(_text(_label(frac), canvas.x(frac), canvas.y(0) + 14, "middle"))
    canvas.add(_text("confidence", canvas.x(0.5), canvas.height - 8, "middle"))
    return canvas.render("Reliability diagram")


def horizontal_bars(title: str, labels: Sequence[str], values: Sequence[float], x_label: str = "") -> Markup:
    """One bar per row (e.g. per-layer sensitivity), longest first as given."""
    row_h = 18
    canvas = _Canvas(title, height=40 + row_h * max(len(labels), 1) + 28, left=220)
    values = [float(v) for v in values]
    finite = [abs(v) for v in values if math.isfinite(v)]
    peak = max(finite) if finite and max(finite) > 0 else 1.0
    for i, (label, value) in enumerate(zip(labels, values)):
        y = canvas.top + i * row_h
        width = canvas.plot_w * (min(abs(value), peak) / peak if math.isfinite(value) else 1.0)
        text = str(label) if len(str(label)) <= 34 else str(label)[:33] + "…"
        canvas.add(_text(text, canvas.left - 6, y + 12, "end"))
        canvas.rect(canvas.left, y + 2, max(width, 0.5), row_h - 4, PALETTE[1], tooltip=f"{label}: {_label(value)}")
        canvas.add(_text(_label(value), canvas.left + width + 4, y + 12))
    if x_label:
        canvas.add(_text(x_label, canvas.x(0.5), canvas.height - 8, "middle"))
    return canvas.render(title)
