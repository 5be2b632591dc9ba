"""Small charts as inline SVG, drawn server-side: no script, no external asset.

:func:`line_chart` draws series of (x, y) points (a linear or log10 x axis), vertical and
horizontal reference lines, axes with ticks and a legend. Every point is a ``<circle>``
carrying its value in ``data-x`` / ``data-y`` (and every reference line its ``data-value``),
so a test (or a curious reviewer) reads the figures back from the SVG. Every text is
escaped: the output is well-formed XML whatever the labels hold.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MAX_POINTS",
    "RefLine",
    "Series",
    "line_chart",
    "nice_ticks",
]

logger = logging.getLogger(__name__)

MAX_POINTS = 2000  # points per series drawn; more are thinned evenly

_COLOURS = {
    "primary": "#0969da",
    "canary": "#bc4c00",
    "strict": "#cf222e",
    "tolerance": "#9a6700",
    "value": "#6639ba",
    "trend": "#57606a",
    "fail": "#cf222e",
}


@dataclass(frozen=True, slots=True)
class Series:
    """A named series; ``kind`` picks its colour (primary, canary, strict, ...)."""

    name: str
    points: Sequence[tuple[float, float]]
    kind: str = "value"
    line: bool = True
    dashed: bool = False
    dots: bool = True
    failed: Sequence[bool | None] = field(default_factory=tuple)  # per point: drawn red


@dataclass(frozen=True, slots=True)
class RefLine:
    """A reference line: vertical at x (``vertical``) or horizontal at y, labelled."""

    value: float
    label: str
    kind: str = "trend"
    vertical: bool = True
    role: str = ""  # e.g. p50, p99, margin, threshold: the element's data-role


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _v(value: float) -> str:
    """A number for a data attribute: enough digits to compare with what was stored."""
    return format(value, ".12g")


def nice_ticks(lo: float, hi: float, *, log: bool = False, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]; decades (with 2 and 5) on a log axis."""
    if log:
        lo, hi = max(lo, 1e-9), max(hi, 1e-9)
        ticks = []
        for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
            for m in (1, 2, 5):
                t = m * 10.0**exp
                if lo <= t <= hi:
                    ticks.append(t)
        return ticks or [lo, hi]
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _thin(points: Sequence[tuple[float, float]]) -> list[tuple[int, tuple[float, float]]]:
    if len(points) <= MAX_POINTS:
        return list(enumerate(points))
    step = len(points) / MAX_POINTS
    return [(int(i * step), points[int(i * step)]) for i in range(MAX_POINTS)]


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    x_format: Callable[[float], str] = lambda v: f"{v:g}",
    y_format: Callable[[float], str] = lambda v: f"{v:g}",
    x_log: bool = False,
    refs: Sequence[RefLine] = (),
    y_min: float | None = None,
    y_max: float | None = None,
    width: int = 560,
    height: int = 240,
    chart_id: str = "",
) -> str:
    """One chart as an ``<svg>`` element (a string); an empty-data chart says so."""
    left, right, top, bottom = 64, 16, 44, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for s in series for x, _ in s.points if not x_log or x > 0]
    ys = [y for s in series for _, y in s.points]
    xs += [r.value for r in refs if r.vertical and (not x_log or r.value > 0)]
    ys += [r.value for r in refs if not r.vertical]
    ident = f' id="{_e(chart_id)}"' if chart_id else ""
    head = (
        f'<svg class="chart"{ident} '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(title)}"><title>{_e(title)}</title>'
        f'<text class="ct" x="{left}" y="16">{_e(title)}</text>'
    )
    if not xs or not ys:
        return head + f'<text class="empty" x="{left}" y="{top + plot_h // 2}">no data</text></svg>'
    x_lo, x_hi = min(xs), max(xs)
    y_lo = min(ys) if y_min is None else y_min
    y_hi = max(ys) if y_max is None else y_max
    y_lo, y_hi = min(y_lo, min(ys)), max(y_hi, max(ys))
    if x_log:
        x_lo, x_hi = math.log10(x_lo), math.log10(x_hi)
    if x_hi - x_lo < 1e-12:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 0.5 if y_lo else 0.0, y_hi + 0.5 if y_hi else 1.0

    def px(x: float) -> float:
        v = math.log10(max(x, 1e-12)) if x_log else x
        return left + (v - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    parts = [head]
    # axes and ticks
    parts.append(
        f'<g class="axes"><rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" '
        f'fill="none" stroke="#d0d7de"/>'
    )
    x_ticks = nice_ticks(10**x_lo if x_log else x_lo, 10**x_hi if x_log else x_hi, log=x_log)
    for t in x_ticks:
        x = px(t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" '
            f'stroke="#57606a"/><text class="tk" x="{x:.1f}" y="{top + plot_h + 16}" '
            f'text-anchor="middle">{_e(x_format(t))}</text>'
        )
    for t in nice_ticks(y_lo, y_hi):
        y = py(t)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eef1f4"/>'
            f'<text class="tk" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_e(y_format(t))}</text>"
        )
    parts.append(
        f'<text class="al" x="{left + plot_w / 2:.0f}" y="{height - 6}" '
        f'text-anchor="middle">{_e(x_label)}</text>'
        f'<text class="al" x="12" y="{top + plot_h / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.0f})">{_e(y_label)}</text></g>'
    )
    # reference lines
    for r in refs:
        colour = _COLOURS.get(r.kind, _COLOURS["trend"])
        if r.vertical:
            if x_log and r.value <= 0:
                continue
            x = px(r.value)
            parts.append(
                f'<g class="ref" data-role="{_e(r.role)}" data-value="{_v(r.value)}">'
                f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
                f'stroke="{colour}" stroke-dasharray="4 3"/>'
                f"<title>{_e(r.label)}</title></g>"
            )
        else:
            y = py(r.value)
            parts.append(
                f'<g class="ref" data-role="{_e(r.role)}" data-value="{_v(r.value)}">'
                f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                f'stroke="{colour}" stroke-dasharray="6 3"/>'
                f'<text class="tk" x="{left + plot_w - 4}" y="{y - 4:.1f}" text-anchor="end" '
                f'fill="{colour}">{_e(r.label)}</text></g>'
            )
    # series
    for s in series:
        colour = _COLOURS.get(s.kind, _COLOURS["value"])
        pts = [(i, p) for i, p in _thin(s.points) if not x_log or p[0] > 0]
        parts.append(f'<g class="series" data-series="{_e(s.name)}" data-kind="{_e(s.kind)}">')
        if s.line and len(pts) > 1:
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for _, (x, y) in pts)
            dash = ' stroke-dasharray="5 4"' if s.dashed else ""
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                f'stroke-width="1.6"{dash}/>'
            )
        if s.dots:
            for i, (x, y) in pts:
                bad = i < len(s.failed) and s.failed[i] is True
                fill = _COLOURS["fail"] if bad else colour
                parts.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="{3.2 if bad else 2.2}" '
                    f'fill="{fill}" data-x="{_v(x)}" data-y="{_v(y)}"'
                    + (' data-failed="1"' if bad else "")
                    + f"><title>{_e(s.name)}: {_e(x_format(x))}, {_e(y_format(y))}</title>"
                    "</circle>"
                )
        parts.append("</g>")
    # legend, between the title and the plot
    lx = left
    for s in series:
        colour = _COLOURS.get(s.kind, _COLOURS["value"])
        parts.append(
            f'<rect x="{lx}" y="{top - 16}" width="10" height="10" fill="{colour}"/>'
            f'<text class="lg" x="{lx + 14}" y="{top - 7}">{_e(s.name)}</text>'
        )
        lx += 24 + 7 * len(s.name)
    parts.append("</svg>")
    return "".join(parts)
