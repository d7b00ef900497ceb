"""Small inline SVG charts: no script, no style attribute (the CSP allows neither inline)."""

from __future__ import annotations

from collections.abc import Sequence

from groundhog_mcp.dashboard.markup import Html, join, markup

__all__ = ["bar_chart", "line_chart"]

_WIDTH = 480
_HEIGHT = 120
_PAD = 24


def _frame(title: str, body: Html, top: float) -> Html:
    return markup(
        '<figure class="chart"><svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}">'
        '<line x1="{p}" y1="{base}" x2="{right}" y2="{base}" stroke="#888"/>'
        '<text x="2" y="12" font-size="10" fill="#555">{top}</text>'
        '<text x="2" y="{base}" font-size="10" fill="#555">0</text>{body}</svg>'
        "<figcaption>{t}</figcaption></figure>",
        w=_WIDTH,
        h=_HEIGHT,
        p=_PAD,
        base=_HEIGHT - _PAD,
        right=_WIDTH - 4,
        t=title,
        top=f"{top:g}",
        body=body,
    )


def bar_chart(title: str, values: Sequence[float], labels: Sequence[str] = ()) -> Html:
    """Bars for ``values`` (left to right), each with a hover title from ``labels``."""
    top = max(values, default=0.0) or 1.0
    span = (_WIDTH - _PAD - 4) / max(len(values), 1)
    height = _HEIGHT - 2 * _PAD
    bars = [
        markup(
            '<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="#4a7bd0">'
            "<title>{label}</title></rect>",
            x=_PAD + i * span + 1,
            y=_HEIGHT - _PAD - value / top * height,
            w=max(span - 2, 1),
            h=value / top * height,
            label=f"{labels[i] if i < len(labels) else i}: {value:g}",
        )
        for i, value in enumerate(values)
    ]
    return _frame(title, join(bars), top)


def line_chart(title: str, points: Sequence[tuple[float, float]], labels: Sequence[str] = ()) -> Html:
    """A polyline through ``(x, y)`` points (x ascending), a dot with a hover title on each."""
    if not points:
        return _frame(title, Html(""), 0)
    xs = [x for x, _ in points]
    low, high = min(xs), max(xs)
    top = max(y for _, y in points) or 1.0
    height = _HEIGHT - 2 * _PAD

    def at(x: float, y: float) -> tuple[float, float]:
        share = (x - low) / (high - low) if high > low else 0.5
        return _PAD + share * (_WIDTH - _PAD - 8), _HEIGHT - _PAD - y / top * height

    placed = [at(x, y) for x, y in points]
    line = markup(
        '<polyline fill="none" stroke="#4a7bd0" stroke-width="2" points="{p}"/>',
        p=" ".join(f"{x:.1f},{y:.1f}" for x, y in placed),
    )
    dots = [
        markup(
            '<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#4a7bd0"><title>{label}</title></circle>',
            x=x,
            y=y,
            label=f"{labels[i] if i < len(labels) else points[i][0]:}: {points[i][1]:g}",
        )
        for i, (x, y) in enumerate(placed)
    ]
    return _frame(title, join([line, *dots]), top)
