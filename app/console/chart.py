"""Rates as an SVG line chart, drawn on the server (no script, no CDN). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from app.console.rates import Bucket

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 60, 24, 14, 36
# SES's review levels (app/reputation/watch.py): drawn as dashed lines.
BOUNCE_REVIEW, COMPLAINT_REVIEW = 0.05, 0.001


def _scale(values: Sequence[float]) -> float:
    top = max([*values, BOUNCE_REVIEW * 1.2])
    return top if top > 0 else 1.0


def rates_svg(buckets: Sequence[Bucket], *, title: str, label_format: str) -> str:
    """Bounce rate and complaint rate (×100, so that 0.1% shows) per bucket."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bounce = [b.bounce_rate for b in buckets]
    complaint = [b.complaint_rate * 100 for b in buckets]
    top = _scale(bounce + complaint)
    n = max(len(buckets) - 1, 1)

    def x(i: int) -> float:
        return LEFT + plot_w * i / n

    def y(value: float) -> float:
        return TOP + plot_h * (1 - min(value, top) / top)

    def line(values: Sequence[float]) -> str:
        return " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ccc"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        value = top * fraction
        parts.append(
            f'<text x="{LEFT - 4}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="15">'
            f"{value * 100:.1f}%</text>"
        )
    parts.append(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(BOUNCE_REVIEW):.1f}" '
        f'y2="{y(BOUNCE_REVIEW):.1f}" stroke="#c0392b" stroke-dasharray="4 4"/>'
    )
    step = max(1, len(buckets) // 4)
    for i, bucket in enumerate(buckets):
        if i % step == 0 or i == len(buckets) - 1:
            parts.append(
                f'<text x="{x(i):.1f}" y="{HEIGHT - 12}" text-anchor="middle" font-size="15">'
                f"{escape(bucket.start.strftime(label_format))}</text>"
            )
    parts.append(
        f'<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{line(bounce)}"/>'
    )
    parts.append(
        f'<polyline fill="none" stroke="#2c3e91" stroke-width="2" points="{line(complaint)}"/>'
    )
    parts.append("</svg>")
    return "".join(parts)
