"""Looks shared by every figure: grayscale-safe styles per size and per law, labels with units.

Sizes are told apart by marker *and* line style *and* a viridis shade (monotonic in lightness, so
the order of sizes survives a grayscale printer); laws by gray level and dash pattern.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
LAW_STYLES = (("black", "-", "X"), ("0.45", "--", "P"), ("0.3", "-.", "d"), ("0.6", ":", "h"))
RC = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linestyle": ":", "legend.framealpha": 0.85, "svg.hashsalt": "scaling-report",
}
"""matplotlib rc settings the report draws under (readable fonts, light grid, reproducible SVG ids)."""

AXIS_LABELS = {
    "params": "parameters N (count)",
    "step": "training steps",
    "steps": "training steps",
    "samples": "samples seen (images)",
    "flops": "training compute C (FLOPs)",
    "tokens": "tokens seen (count)",
}


def tick_text(x: float) -> str:
    """Plain tick labels (no mathtext: faster and easier to read): 2e5 -> '200k', 0.25 -> '0.25'."""
    if x >= 1e3:
        return fmt_count(x)
    if x >= 1e-2:
        return f"{x:.3g}"
    return f"{x:.0e}"


class PlainLogFormatter(LogFormatter):
    """`LogFormatter` (decades and, on short ranges, minor ticks) with `tick_text` labels."""

    def _num_to_string(self, x, vmin, vmax):
        return tick_text(x)


def log_axes(ax: Axes, x: bool = True, y: bool = True) -> Axes:
    """Log scales with plain tick labels on the chosen axes."""
    for on, axis, set_scale in ((x, ax.xaxis, ax.set_xscale), (y, ax.yaxis, ax.set_yscale)):
        if on:
            set_scale("log")
            axis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
            axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1.2, 0.6)))
    return ax


def new_axes(figsize: tuple[float, float] = (7.0, 4.6)) -> Axes:
    """An axes on a fresh `Figure` (Agg canvas, no pyplot: no global state, nothing opens a window)."""
    return Figure(figsize=figsize, layout="constrained").add_subplot()


def size_styles(sizes: Sequence[str]) -> dict[str, dict]:
    """`{size: {color, marker, linestyle}}`, smallest size darkest."""
    cmap = colormaps["viridis"]
    n = max(len(sizes) - 1, 1)
    return {size: {"color": cmap(0.82 * i / n), "marker": MARKERS[i % len(MARKERS)],
                   "linestyle": LINESTYLES[i % len(LINESTYLES)]}
            for i, size in enumerate(sizes)}


def law_style(i: int) -> dict:
    color, ls, marker = LAW_STYLES[i % len(LAW_STYLES)]
    return {"color": color, "linestyle": ls, "marker": marker}


def axis_label(column: str) -> str:
    return AXIS_LABELS.get(column, column)


def metric_label(metric: str) -> str:
    """`eval/iw/laplace` -> `L_iw, laplace weighting (ε-MSE per pixel)`."""
    if metric.startswith("eval/iw/"):
        return f"L_iw, {metric[len('eval/iw/'):]} weighting (ε-MSE per pixel)"
    if metric == "train/loss":
        return "training loss (ε-MSE per pixel)"
    return metric


def short_metric(metric: str) -> str:
    return metric[len("eval/iw/"):] if metric.startswith("eval/iw/") else metric


def fmt(v: float | None, digits: int = 4) -> str:
    """A number for tables and labels: 4 significant digits, '—' for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}g}"


def fmt_count(v: float | None) -> str:
    """1234567 -> '1.23M'; counts of parameters and FLOPs."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.0f}"


def pct(v: float | None) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:+.1%}"


def note(ax: Axes, text: str) -> Axes:
    """Write a plain message in an empty axes (a figure with no data says why instead of failing)."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", wrap=True, fontsize=10)
    return ax
