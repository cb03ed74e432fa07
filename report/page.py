"""The report as one self-contained HTML page: the table on top, the charts as base64 PNGs."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from ringez_worker.report.data import API, QUALITY, RECHARGES, SUMMARIES, DayData

# The page's order and alt texts; charts.py draws the same names. Kept here so reading
# a kept page back (`report --latest`) needs no matplotlib.
CHART_TITLES = {
    "volume": "call volume by hour",
    "outcomes": "call outcomes",
    "durations": "call durations",
    "cost": "cost by hour",
    "actions": "escalations and recharges",
    "quality": "call quality (MOS)",
}


@dataclass(frozen=True)
class Rendered:
    html: str
    charts: dict[str, bytes]


def _money(value: float) -> str:
    return f"{value:.2f}"


def _recharge_amount(data: DayData) -> str:
    by_currency: dict[str, float] = {}
    for r in data.recharges:
        currency = str(r.get("currency") or "")
        by_currency[currency] = by_currency.get(currency, 0.0) + float(r.get("amount") or 0)
    if not by_currency:
        return "0.00"
    return ", ".join(f"{_money(v)} {c}".strip() for c, v in sorted(by_currency.items()))


def rows(data: DayData) -> list[tuple[str, str, str, str]]:
    """(metric id, label, value, source) of the table, in order."""
    t = data.totals
    peak = data.peak_hour
    summary_cost = sum(float(s.get("cost") or 0) for s in data.summaries)
    table = [
        ("total_calls", "Total calls", str(data.total_calls), API),
        ("success_rate", "Success rate", f"{float(t['success_rate']) * 100:.1f} %", API),
        ("average_duration", "Average duration", f"{float(t['average_duration']):.1f} s", API),
        ("total_cost", "Total cost", _money(float(t["total_cost"])), API),
        ("summary_cost", "Cost in call summaries", _money(summary_cost), SUMMARIES),
        (
            "peak_hour",
            "Peak hour",
            f"{peak:02d}:00-{(peak + 1) % 24:02d}:00" if peak is not None else "-",
            API,
        ),
        ("transfers", "Transfers (escalations)", str(data.transfers), SUMMARIES),
        ("recharges", "Recharges", str(len(data.recharges)), RECHARGES),
        ("recharge_amount", "Recharged amount", _recharge_amount(data), RECHARGES),
        ("quality_samples", "Calls with quality data", str(len(data.mos)), QUALITY),
    ]
    if data.campaign_calls:
        table.insert(1, ("campaign_calls", "Campaign calls", str(data.campaign_calls), API))
    return table


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 860px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } p.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 1em 0 2em; width: 100%; }
th, td { text-align: left; padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; }
td.value { font-variant-numeric: tabular-nums; font-weight: 600; }
td.source { color: #666; font-size: 0.9em; }
figure { margin: 0 0 1.5em; } figure img { max-width: 100%; }
figcaption.empty { color: #666; font-size: 0.9em; }
"""


def _figure(name: str, title: str, png: bytes, empty: str | None) -> str:
    # A chart with nothing to draw says so in the page's text too (screen readers, search,
    # a page read without its images), not only inside the PNG.
    e = html.escape
    alt = f"{title}: {empty}" if empty else title
    caption = f'<figcaption class="empty">{e(title)}: {e(empty)}</figcaption>' if empty else ""
    return (
        f'<figure><img data-chart="{name}" alt="{e(alt)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">{caption}</figure>'
    )


def build_page(data: DayData, charts: dict[str, bytes]) -> str:
    """The HTML page for `data` with `charts` embedded."""
    e = html.escape
    scope = f"session {data.session_id}" if data.session_id else "all sessions"
    made = datetime.fromtimestamp(data.generated_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join(
        f'<tr><th>{e(label)}</th><td class="value" data-metric="{key}">{e(value)}</td>'
        f'<td class="source">{e(source)}</td></tr>'
        for key, label, value, source in rows(data)
    )
    figures = "\n".join(
        _figure(name, title, charts[name], data.empty_sentence(name))
        for name, title in CHART_TITLES.items()
        if name in charts
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Ringez daily report {e(data.day)}</title><style>{_STYLE}</style></head>
<body>
<h1>Ringez daily report: {e(data.day)}</h1>
<p class="meta">{e(scope)} · hours in {e(data.timezone)} · generated {e(made)}</p>
<table><thead><tr><th>metric</th><th>value</th><th>source</th></tr></thead>
<tbody>
{table}
</tbody></table>
{figures}
</body></html>
"""


def render_report(data: DayData) -> Rendered:
    """Charts and page for `data` (CPU-bound: run it in a thread from async code)."""
    from ringez_worker.report.charts import render_charts  # matplotlib only when drawing

    charts = render_charts(data)
    return Rendered(html=build_page(data, charts), charts=charts)


_IMG = re.compile(r'data-chart="([a-z_]+)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def charts_from_page(page: str) -> dict[str, bytes]:
    """The PNGs embedded in a page (a kept report is stored as its page alone)."""
    return {name: base64.b64decode(b64) for name, b64 in _IMG.findall(page)}
