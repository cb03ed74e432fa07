"""Small inline SVG charts rendered on the server (no chart library, no script)."""

from __future__ import annotations

from markupsafe import Markup

W, H, PAD = 1200, 160, 4
# Presentation attributes, not CSS: the chart is also served alone as an <img> (where the
# page's stylesheet does not reach) and the CSP allows no inline <style>.
COLOURS = {
    "accepted": "#4a90d9",
    "duplicate": "#e0b341",
    "rejected": "#d9534f",
    "handled": "#3fa36b",
    "retried": "#e0b341",
    "failed": "#c53030",
}
AXIS = 'stroke="#d9dee7" stroke-width="1"'
NS = 'xmlns="http://www.w3.org/2000/svg"'


def bars(series: dict[str, list[int]], names: tuple[str, ...]) -> Markup:
    """Stacked bars per minute for `names` (CSS classes `s-<name>` colour them)."""
    n = max((len(v) for v in series.values()), default=0) or 1
    peak = max((sum(series[k][i] for k in names) for i in range(n)), default=0) or 1
    step = (W - 2 * PAD) / n
    parts = []
    for i in range(n):
        y: float = H - PAD
        for name in names:
            value = series[name][i]
            if not value:
                continue
            h = (H - 2 * PAD) * value / peak
            y -= h
            parts.append(
                f'<rect fill="{COLOURS.get(name, "#888")}" x="{PAD + i * step:.1f}" y="{y:.1f}" '
                f'width="{max(step - 1, 1):.1f}" height="{h:.1f}">'
                f"<title>{value} {name}</title></rect>"
            )
    return Markup(
        f'<svg {NS} class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="last hour">'
        f'<line {AXIS} x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}"/>'
        + "".join(parts)
        + "</svg>"
    )


def line(values: list[float], low: float = -1.0, high: float = 1.0) -> Markup:
    """A polyline of `values` between `low` and `high`, with a zero line."""
    if not values:
        return Markup("")
    span = high - low
    step = (W - 2 * PAD) / max(len(values) - 1, 1)

    def y(v: float) -> float:
        return PAD + (H - 2 * PAD) * (high - max(low, min(high, v))) / span

    points = " ".join(f"{PAD + i * step:.1f},{y(v):.1f}" for i, v in enumerate(values))
    dots = "".join(
        f'<circle fill="#2b6cb0" cx="{PAD + i * step:.1f}" cy="{y(v):.1f}" r="4">'
        f"<title>{v:+.2f}</title></circle>"
        for i, v in enumerate(values)
    )
    return Markup(
        f'<svg {NS} class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="sentiment">'
        f'<line {AXIS} x1="{PAD}" y1="{y(0):.1f}" x2="{W - PAD}" y2="{y(0):.1f}"/>'
        f'<polyline fill="none" stroke="#2b6cb0" stroke-width="2.5" points="{points}"/>'
        f"{dots}</svg>"
    )
