"""The report's charts, one PNG each: matplotlib's object API on the Agg canvas.

No pyplot: pyplot keeps global state and picks a GUI backend, while a `Figure` on its
own `FigureCanvasAgg` is headless and independent, so rendering can run in a thread.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, MultipleLocator

from ringez_worker.report.data import OUTCOMES, DayData

SIZE = (8.0, 3.6)  # inches; 800 x 360 px at DPI
DPI = 100
BLUE, GREEN, RED, ORANGE, GREY, PURPLE = (
    "#3b6ea8",
    "#4c9a5b",
    "#c0504d",
    "#e08a2c",
    "#8c8c8c",
    "#7b5ea7",
)
OUTCOME_COLOURS = {"completed": GREEN, "failed": RED, "busy": ORANGE, "no-answer": GREY}

Chart = Callable[[Axes, DayData], None]


def _empty(ax: Axes, data: DayData, chart: str) -> bool:
    """A sentence instead of an empty axis when `chart` has nothing to draw; True then."""
    text = data.empty_sentence(chart)
    if text is None:
        return False
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        f"{text}\n{data.day}, {data.timezone}",
        ha="center",
        va="center",
        fontsize=13,
        color="#555555",
        linespacing=1.6,
        bbox={"boxstyle": "round,pad=0.8", "facecolor": "#f4f4f4", "edgecolor": "#dddddd"},
    )
    return True


def _hours_axis(ax: Axes, data: DayData) -> None:
    # 24 bars: a label every 3 hours keeps them apart; every hour gets a minor tick.
    ax.set_xlim(-0.6, 23.6)
    ax.xaxis.set_major_locator(MultipleLocator(3))
    ax.xaxis.set_minor_locator(MultipleLocator(1))
    ax.set_xticks(range(0, 24, 3), [f"{h:02d}:00" for h in range(0, 24, 3)])
    ax.set_xlabel(f"hour of day, {_zone_label(data)}")
    ax.grid(axis="y", alpha=0.3)


def _zone_label(data: DayData) -> str:
    # "Etc/GMT-7" means UTC+7 (POSIX signs): the offset is spelled out beside the name.
    offset = (
        datetime.strptime(data.day, "%Y-%m-%d")
        .replace(hour=12, tzinfo=ZoneInfo(data.timezone))
        .strftime("%z")
    )
    utc = "UTC" if offset == "+0000" else f"UTC{offset[:3]}:{offset[3:]}"
    return data.timezone if data.timezone == "UTC" else f"{data.timezone} ({utc})"


def _count_axis(ax: Axes, top: float) -> None:
    # Whole numbers only, and headroom so the tallest bar does not touch the frame.
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    ax.set_ylim(0, max(1.0, top) * 1.12)


def volume(ax: Axes, data: DayData) -> None:
    ax.set_title("Call volume by hour")
    if _empty(ax, data, "volume"):
        return
    ax.bar([h.hour for h in data.hours], [h.calls for h in data.hours], color=BLUE, width=0.8)
    _hours_axis(ax, data)
    ax.set_ylabel("calls (count)")
    _count_axis(ax, max(h.calls for h in data.hours))


def outcomes(ax: Axes, data: DayData) -> None:
    ax.set_title("Call outcomes")
    if _empty(ax, data, "outcomes"):
        return
    totals = data.outcome_totals()
    names = list(OUTCOMES)
    counts = [totals[o] for o in names]
    bars = ax.barh(names, counts, color=[OUTCOME_COLOURS[o] for o in names], height=0.6)
    ax.bar_label(bars, padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("calls (count)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    ax.set_xlim(0, max(counts) * 1.15 + 0.5)
    ax.grid(axis="x", alpha=0.3)


def durations(ax: Axes, data: DayData) -> None:
    ax.set_title("Call durations (completed calls)")
    if _empty(ax, data, "durations"):
        return
    minutes = sorted(s / 60 for s in data.completed_seconds())
    # Bins sized to the bulk of the calls (up to the 98th percentile); the few longer
    # ones go into the last bar instead of stretching the axis into empty space.
    cap = (
        minutes[min(len(minutes) - 1, int(len(minutes) * 0.98))]
        if len(minutes) > 20
        else minutes[-1]
    )
    step = next((n for n in (0.25, 0.5, 1, 2, 5, 10, 15, 30, 60) if cap / n <= 20), 120.0)
    edges = [i * step for i in range(int(cap / step) + 2)]
    overflow = sum(m >= edges[-1] for m in minutes)
    minutes = [min(m, edges[-1] - step / 2) for m in minutes]
    label = "duration (minutes)"
    if overflow:
        label += f"; the last bar includes {overflow} longer calls"
    counts, _, _ = ax.hist(minutes, bins=edges, color=BLUE, edgecolor="white")
    ax.set_xlabel(label)
    ax.set_ylabel("calls (count)")
    # Ticks on bin edges, at most about a dozen of them.
    ax.xaxis.set_major_locator(MultipleLocator(step * max(1, -(-len(edges) // 12))))
    _count_axis(ax, float(max(counts)))
    ax.grid(axis="y", alpha=0.3)


def cost(ax: Axes, data: DayData) -> None:
    ax.set_title("Cost by hour")
    if _empty(ax, data, "cost"):
        return
    ax.bar([h.hour for h in data.hours], [h.cost for h in data.hours], color=PURPLE, width=0.8)
    _hours_axis(ax, data)
    ax.set_ylabel("cost (account currency)")
    ax.set_ylim(0, max(h.cost for h in data.hours) * 1.12)


def agent_actions(ax: Axes, data: DayData) -> None:
    ax.set_title("Escalations (transfers) and recharges by hour")
    if _empty(ax, data, "actions"):
        return
    hours = [h.hour for h in data.hours]
    ax.bar(
        [h - 0.2 for h in hours],
        [h.escalations for h in data.hours],
        0.4,
        color=RED,
        label="escalations (transfers)",
    )
    ax.bar(
        [h + 0.2 for h in hours],
        [h.recharges for h in data.hours],
        0.4,
        color=GREEN,
        label="recharges",
    )
    _hours_axis(ax, data)
    ax.set_ylabel("events (count)")
    _count_axis(ax, max(max(h.escalations, h.recharges) for h in data.hours) * 1.15)
    ax.legend(loc="upper right", frameon=False, ncols=2)


def quality(ax: Axes, data: DayData) -> None:
    ax.set_title("Call quality (MOS) distribution")
    if _empty(ax, data, "quality"):
        return
    edges = [1 + i * 0.25 for i in range(17)]  # MOS runs from 1 (bad) to 5 (excellent)
    counts, _, _ = ax.hist(data.mos, bins=edges, color=BLUE, edgecolor="white")
    ax.axvline(3.5, color=RED, linestyle="--", linewidth=1, label="3.5: low quality below")
    ax.set_xlim(1, 5)
    ax.set_xlabel("MOS score (1 bad - 5 excellent)")
    ax.set_ylabel("calls (count)")
    _count_axis(ax, float(max(counts)) * 1.15)
    ax.legend(loc="best", frameon=False)
    ax.grid(axis="y", alpha=0.3)


CHARTS: dict[str, Chart] = {
    "volume": volume,
    "outcomes": outcomes,
    "durations": durations,
    "cost": cost,
    "actions": agent_actions,
    "quality": quality,
}


def render_chart(chart: Chart, data: DayData) -> bytes:
    """One chart as PNG bytes."""
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    chart(fig.add_subplot(), data)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_charts(data: DayData) -> dict[str, bytes]:
    """Every chart, by name, as PNG bytes."""
    return {name: render_chart(chart, data) for name, chart in CHARTS.items()}
