"""The five figures of a scaling report. Each function draws on `ax` (a new one when None) and returns it.

They draw fitted laws from `FitResult`s (`fit.predict`, `fit.band` from the stored bootstrap samples):
nothing is refitted here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from scaling.fit import FitResult
from scaling.laws import get_law
from scaling.report.data import Run, curve_size, size_order
from scaling.report.style import (
    axis_label,
    fmt,
    law_style,
    log_axes,
    metric_label,
    new_axes,
    note,
    pct,
    short_metric,
    size_styles,
)
from scaling.report.weightings import weight


def _x_of(fit: FitResult) -> str | None:
    """The table column a one-input law was fitted over, or None for laws of several inputs."""
    return fit.columns.get("x") if get_law(fit.law).inputs == ("x",) else None


def _span(fit: FitResult, column: str) -> tuple[float, float, float]:
    """(smallest fitted x, largest fitted x, largest x to draw: the held-out ones included)."""
    xs = [p.x[column] for p in fit.points if p.x.get(column, 0) > 0]  # log axes: positive x only
    targets = [h.x[column] for h in fit.holdout if h.x.get(column, 0) > 0]
    return min(xs), max(xs), max([max(xs), *targets])


def _draw_law(ax: Axes, fit: FitResult, column: str, style: dict, label: str, name: str,
              extend_to: float = 0.0) -> None:
    """The law solid over the fitted range, dotted beyond it to the held-out x (or `extend_to`), with its
    bootstrap band."""
    lo, hi, target = _span(fit, column)
    target = max(target, extend_to)
    xs = np.geomspace(lo, hi, 80)
    ax.plot(xs, fit.predict(xs), color=style["color"], linestyle=style["linestyle"], lw=2, label=label, zorder=2)
    end = max(target * 1.15, hi)
    if target > hi * 1.0001:
        xe = np.geomspace(hi, end, 40)
        ax.plot(xe, fit.predict(xe), color=style["color"], linestyle=":", lw=1.6, label=f"{name} extrapolated",
                zorder=2)
    xb = np.geomspace(lo, end, 120)
    band = fit.band(xb)
    if band is not None:
        ax.fill_between(xb, band[0], band[1], color=style["color"], alpha=0.15, lw=0, zorder=1,
                        label=f"{name} {fit.level:.0%} bootstrap band")


def _draw_holdout(ax: Axes, fit: FitResult, column: str, style: dict, actual_label: bool) -> None:
    """Each held-out prediction with its interval, the actual value as a star, the relative error written."""
    for h in fit.holdout:
        if column not in h.x:
            continue
        x = h.x[column]
        yerr = None
        if h.interval is not None:
            yerr = [[max(h.predicted - h.interval[0], 0.0)], [max(h.interval[1] - h.predicted, 0.0)]]
        interval = f" [{fmt(h.interval[0])}, {fmt(h.interval[1])}]" if h.interval else ""
        ax.errorbar([x], [h.predicted], yerr=yerr, color=style["color"], marker=style["marker"], ms=8,
                    capsize=4, ls="none", label=f"{fit.law} predicts {h.label}: {fmt(h.predicted)}{interval}")
        if h.actual is not None:
            ax.plot([x], [h.actual], marker="*", ms=15, color="black", mfc="white", mew=1.5, ls="none",
                    label=f"{h.label} actual: {fmt(h.actual)}" if actual_label else None)
            inside = "" if h.inside is None else (", inside" if h.inside else ", outside")
            ax.annotate(f"{pct(h.relative_error)}{inside}", (x, h.predicted), xytext=(10, -4 - 12 * actual_label),
                        textcoords="offset points", fontsize=8, color=style["color"])
            actual_label = False


def plot_loss_vs_params(runs: Sequence[Run], fits: Sequence[FitResult] = (), *, metric: str,
                        ax: Axes | None = None) -> Axes:
    """Figure 1: final loss of each run over parameters (log-log), the fitted laws over the fitted sizes,
    dotted extrapolation to the held-out size, bootstrap band, held-out actual vs predicted."""
    ax = ax or new_axes((10.0, 4.8))
    sizes = size_order(runs)
    styles = size_styles(sizes)
    for size in sizes:
        pts = [r for r in runs if r.size == size and np.isfinite(r.params)]
        if not pts:
            continue
        partial = [r for r in pts if r.partial]
        st = styles[size]
        label = size + (f" ({partial[0].state})" if partial else "")
        ax.plot([r.params for r in pts], [r.final for r in pts], ls="none", marker=st["marker"], color=st["color"],
                mfc="white" if partial else st["color"], ms=8, mew=1.5, label=label)
    drawn = [f for f in fits if _x_of(f) == "params" and f.metric == metric
             and any(p.x.get("params", 0) > 0 for p in f.points)]
    for i, fit in enumerate(drawn):
        st = law_style(i)
        biggest = max((r.params for r in runs if np.isfinite(r.params)), default=0.0)  # e.g. a running XL
        _draw_law(ax, fit, "params", st, f"{fit.law}: {fit.formula}", fit.law, extend_to=biggest)
        _draw_holdout(ax, fit, "params", st, actual_label=(i == 0))
    if not ax.lines:
        return note(ax, "no run has a parameter count: the table needs a `params` column")
    log_axes(ax)
    ax.set_xlabel(axis_label("params"))
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"Loss vs parameters ({short_metric(metric)})" + ("" if drawn else ": no fit found"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return ax


def plot_loss_vs_steps(curves: Mapping[str, pd.DataFrame], runs: Sequence[Run],
                       fits: Sequence[FitResult] = (), *, metric: str, x: str = "step",
                       heldout: Sequence[str] = (), partials: Sequence = (), ax: Axes | None = None) -> Axes:
    """Figure 2: the loss of each size over steps (or samples, FLOPs), the fitted L(x) curve of each size
    (of several laws, the one with the lowest fit loss),
    and the held-out sizes' curves in black: solid over the points they were fitted on, dotted beyond them
    to the end of the longest run, with the band and the backtest of the last point."""
    ax = ax or new_axes((10.0, 4.8))
    sizes = size_order(runs)
    styles = size_styles(sizes)
    by_run = {r.run_id: r for r in runs}
    labelled: set[str] = set()
    for run_id, points in curves.items():
        run = by_run.get(run_id)
        if run is None or points.empty:
            continue
        st = styles[run.size]
        label = None if run.size in labelled else run.size + (f" ({run.state})" if run.partial else "")
        labelled.add(run.size)
        ax.plot(points[x], points[metric], color=st["color"], marker=st["marker"], ms=4, lw=1,
                linestyle=st["linestyle"], mfc="white" if run.partial else st["color"], label=label, zorder=3)
    drawn = 0
    best: dict[str, FitResult] = {}  # one curve per size: the law that fits it best (lowest loss)
    for fit in fits:
        size = curve_size(fit)
        if (size in styles and _x_of(fit) == x and fit.metric == metric
                and any(p.x.get(x, 0) > 0 for p in fit.points)
                and (size not in best or fit.objective < best[size].objective)):
            best[size] = fit
    for size in (s for s in sizes if s in best):
        fit = best[size]
        if size in heldout:
            st = {"color": "black", "linestyle": "--", "marker": "X"}
            end = max((float(p[x].max()) for p in curves.values() if not p.empty), default=0.0)
            _, hi, _ = _span(fit, x)
            _draw_law(ax, fit, x, st, f"{size} curve fit ({x} ≤ {hi:g}): {fit.formula}", size, extend_to=end)
            _draw_holdout(ax, fit, x, st, actual_label=True)
        else:
            lo, hi, _ = _span(fit, x)
            xs = np.geomspace(lo, hi, 60)
            ax.plot(xs, fit.predict(xs), color=styles[size]["color"], lw=3.5, alpha=0.35, zorder=1,
                    label=f"{size} fit: {fit.formula}")
        drawn += 1
    for p in partials:  # a running size's final loss predicted from its partial curve + the other sizes
        if p.metric != metric or not p.rows or p.size not in styles:
            continue
        last = p.rows[-1]
        yerr = None
        if last.interval is not None:
            yerr = [[max(last.predicted - last.interval[0], 0.0)], [max(last.interval[1] - last.predicted, 0.0)]]
        interval = f" [{fmt(last.interval[0])}, {fmt(last.interval[1])}]" if last.interval else ""
        ax.errorbar([p.final_step], [last.predicted], yerr=yerr, color="0.35", marker="D", ms=7, capsize=4,
                    ls="none", label=f"{p.law} predicts {p.size}@{p.final_step:g} from {last.fraction:.0%} of its "
                                     f"curve: {fmt(last.predicted)}{interval}")
        drawn += 1
    if not ax.lines:
        return note(ax, f"no {metric} values over {x}")
    log_axes(ax)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"Loss vs {axis_label(x).split(' (')[0]}" + ("" if drawn else " (no curve fits found)"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return ax


def plot_level_losses(levels: Mapping[str, np.ndarray], grid: np.ndarray | None, weightings: Sequence[str] = (),
                      *, ax: Axes | None = None) -> Axes:
    """Figure 3a: ℓ(λ) at the last evaluation of each size, with each weighting w(λ) (scaled to max 1) on a
    second y axis. `grid` is the λ of each level column; None draws over the level index instead."""
    ax = ax or new_axes((7.2, 4.4))
    if not levels:
        return note(ax, "the table has no eval/level/<k> columns: per-level losses were not logged")
    sizes = [s for s in levels]
    styles = size_styles(sizes)
    n = len(next(iter(levels.values())))
    xs = grid if grid is not None and len(grid) == n else np.arange(n)
    for size in sizes:
        st = styles[size]
        ax.plot(xs, levels[size], color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                markevery=max(n // 10, 1), ms=5, lw=1.5, label=f"ℓ(λ) {size}")
    log_axes(ax, x=False)
    ax.set_xlabel("log-SNR λ = ln(α²/σ²) (dimensionless)" if xs is grid else "level index k (λ grid unknown)")
    ax.set_ylabel("per-level loss ℓ(λ) (ε-MSE per pixel)")
    ax.set_title("Per-noise-level loss and the importance weightings")
    handles, labels = ax.get_legend_handles_labels()
    if weightings and xs is grid:
        twin = ax.twinx()
        twin.grid(False)
        for i, label in enumerate(weightings):
            w = weight(label, grid)
            twin.plot(grid, w / w.max(), color=str(0.15 + 0.5 * i / max(len(weightings) - 1, 1)),
                      linestyle=(0, (1 + i, 1.5)), lw=1.2, label=f"w(λ) {label}")
        twin.set_ylabel("weighting w(λ), scaled to max 1")
        twin.set_ylim(0, 1.6)
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper left", ncol=2)
    return ax


def plot_level_gain(levels: Mapping[str, np.ndarray], grid: np.ndarray | None, *, ax: Axes | None = None) -> Axes:
    """Figure 3b: where along λ the bigger models gain: 1 − ℓ_size(λ)/ℓ_smallest(λ), in percent."""
    ax = ax or new_axes((7.2, 3.0))
    sizes = list(levels)
    if len(sizes) < 2:
        return note(ax, "one size only: no gain to show")
    styles = size_styles(sizes)
    base = levels[sizes[0]]
    n = len(base)
    xs = grid if grid is not None and len(grid) == n else np.arange(n)
    for size in sizes[1:]:
        st = styles[size]
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = 100.0 * (1.0 - levels[size] / base)
        ax.plot(xs, gain, color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                markevery=max(n // 10, 1), ms=5, lw=1.5, label=f"{size} vs {sizes[0]}")
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_xlabel("log-SNR λ = ln(α²/σ²) (dimensionless)" if xs is grid else "level index k (λ grid unknown)")
    ax.set_ylabel(f"gain over {sizes[0]} (%)")
    ax.set_title(f"Where the bigger models gain: 1 − ℓ_size(λ)/ℓ_{sizes[0]}(λ)")
    ax.legend(loc="best")
    return ax


def plot_weighting_backtest(fits: Sequence[FitResult], *, ax: Axes | None = None) -> Axes:
    """Figure 4: for each weighting (metric) and law, the backtest's relative error on the held-out size,
    with the prediction interval as an error bar: the most predictable metric has the shortest bar."""
    ax = ax or new_axes((7.2, 4.4))
    rows = [(f, h) for f in fits if _x_of(f) == "params" for h in f.holdout
            if h.actual is not None and h.relative_error is not None]
    if not rows:
        return note(ax, "no backtest with an actual value: no held-out size has finished, or no fit was made")
    metrics = sorted({f.metric for f, _ in rows}, key=lambda m: min(abs(h.relative_error) for f, h in rows
                                                                   if f.metric == m))
    laws = list(dict.fromkeys(f.law for f, _ in rows))
    height = 0.8 / len(laws)
    hatches = ("", "//", "..", "xx")
    for j, law in enumerate(laws):
        ys, errs, lo, hi, notes = [], [], [], [], []
        for i, metric in enumerate(metrics):
            hit = [(f, h) for f, h in rows if f.metric == metric and f.law == law]
            if not hit:
                continue
            _, h = hit[0]
            err = 100.0 * h.relative_error
            ys.append(i - 0.4 + height * (j + 0.5))
            errs.append(err)
            if h.interval is not None:
                lo.append(max(err - 100.0 * (h.interval[0] - h.actual) / h.actual, 0.0))
                hi.append(max(100.0 * (h.interval[1] - h.actual) / h.actual - err, 0.0))
            else:
                lo.append(0.0)
                hi.append(0.0)
            notes.append(f"{err:+.1f}% {h.label}" + ("" if h.inside is None else (" ✓" if h.inside else " ✗")))
        st = law_style(j)
        ax.barh(ys, errs, height=height * 0.9, xerr=[lo, hi], color=st["color"], alpha=0.75,
                hatch=hatches[j % len(hatches)], edgecolor="black", capsize=3, label=law)
        for y, e, l, h, text in zip(ys, errs, lo, hi, notes):  # beside the whisker, away from zero
            ax.annotate(text, (e + h if e >= 0 else e - l, y), xytext=(5 if e >= 0 else -5, 0),
                        textcoords="offset points", ha="left" if e >= 0 else "right", va="center", fontsize=8)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(range(len(metrics)), [short_metric(m) for m in metrics])
    ax.invert_yaxis()  # the most predictable weighting on top
    ax.set_ylabel("weighting of L_iw")
    ax.set_xlabel("backtest relative error (predicted − actual)/actual (%); bar: interval; ✓ actual inside")
    ax.set_title("Which weighting scales most predictably (held-out size)")
    lim = max(abs(v) for v in ax.get_xlim())
    ax.set_xlim(-1.6 * lim, 1.6 * lim)
    ax.legend(title="law", loc="lower right")
    return ax


def frontier(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The compute frontier: the points with a lower loss than every point at less or equal compute."""
    pts = points[[x, y]].dropna().sort_values([x, y])
    keep = pts[y] < pts[y].cummin().shift(1, fill_value=np.inf)
    return pts[keep.to_numpy()]


def plot_compute(curves: Mapping[str, pd.DataFrame], runs: Sequence[Run], *, metric: str,
                 ax: Axes | None = None) -> Axes:
    """Figure 5: loss vs total training FLOPs of each size, with the compute frontier (lower envelope)."""
    ax = ax or new_axes((7.2, 4.6))
    sizes = size_order(runs)
    styles = size_styles(sizes)
    by_run = {r.run_id: r for r in runs}
    labelled: set[str] = set()
    pieces = []
    for run_id, points in curves.items():
        run = by_run.get(run_id)
        if run is None or points.empty:
            continue
        st = styles[run.size]
        ax.plot(points["flops"], points[metric], color=st["color"], marker=st["marker"], ms=4, lw=1.2,
                linestyle=st["linestyle"], label=None if run.size in labelled else run.size)
        labelled.add(run.size)
        pieces.append(points)
    if not pieces:
        return note(ax, "no FLOP counts in the table (`flops` column): the compute view needs them")
    front = frontier(pd.concat(pieces), "flops", metric)
    ax.plot(front["flops"], front[metric], color="black", lw=2.5, alpha=0.6, linestyle=(0, (6, 2)),
            label="compute frontier (lowest loss so far)")
    log_axes(ax)
    ax.set_xlabel(axis_label("flops"))
    ax.set_ylabel(metric_label(metric))
    ax.set_title("Compute view: loss vs training FLOPs")
    ax.legend(loc="best")
    return ax
