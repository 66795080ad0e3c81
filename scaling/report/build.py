"""Build a report: table + fit results -> figures, tables, `index.html`, `report.md`, written atomically.

`build_report` takes a DataFrame (from `load_table`, or any other source such as the MLflow export) and
`FitResult`s (from `load_fits`); `report_paths` resolves the files of a sweep for the CLI.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from scaling.errors import FitError, ReportError
from scaling.fit import SCHEMA_VERSION, FitResult
from scaling.fit.partial import PartialPrediction
from scaling.fit.plain import from_plain
from scaling.report import data as D
from scaling.report import figures as F
from scaling.report.page import FigureOut, Page, render_html, render_markdown
from scaling.report.style import RC, short_metric
from scaling.report.tables import (
    backtest_table,
    headline,
    params_table,
    partial_headline,
    partial_table,
    runs_table,
    target_lines,
    warnings_table,
)
from scaling.spec import EvalSpec, Spec

log = logging.getLogger(__name__)

TableLoader = Callable[[Path], pd.DataFrame]
"""How the CLI gets the table of a sweep: `load_table` reads the exported CSV; swap in another loader."""


@dataclass(frozen=True)
class ReportResult:
    """What `build_report` wrote."""

    out: Path
    "The report folder (index.html, report.md, figures/)."
    figures: tuple[str, ...]
    "Figure file stems, e.g. `loss_vs_params` (figures/<stem>.png and .svg)."
    status: tuple[str, ...]
    "Plain sentences about unfinished, failed or missing runs."
    problems: tuple[str, ...]
    "Inputs that could not be used."


@dataclass(frozen=True)
class PartialFile:
    """A `fits/<name>/<metric>__<law>__partial-<size>.json` file (docs/fitting.md): a running size's final
    loss predicted from its partial curve plus the other sizes, one row per fraction of the curve seen."""

    metric: str
    law: str
    size: str
    final_step: float
    rows: tuple[PartialPrediction, ...]

    @classmethod
    def read(cls, path: Path) -> PartialFile:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(d, dict):
                raise FitError(f"expected a JSON object, got {type(d).__name__}")
            if d.get("schema_version") != SCHEMA_VERSION:
                raise FitError(f"schema_version {d.get('schema_version')!r}; this scaling reads {SCHEMA_VERSION}")
            return from_plain(cls, {k: v for k, v in d.items() if k not in ("schema_version", "kind")}, "partial")
        except (OSError, ValueError, RecursionError, FitError) as e:
            raise FitError(f"{path}: not a readable partial-prediction file ({e})") from e


def load_fits(paths: Sequence[str | Path]) -> tuple[list[FitResult], list[PartialFile], list[str]]:
    """Read fit result files (each path a `.json` file or a folder of them): `FitResult.read` for fits,
    `PartialFile.read` for partial-curve predictions (`"kind": "partial"`).

    Returns (fits, partial predictions, problems). A file that cannot be read is a problem, not an error:
    the rest of the report is still worth having. A path with no results is a problem too."""
    fits, partials, problems = [], [], []
    for path in map(Path, paths):
        files = sorted(path.glob("*.json")) if path.is_dir() else [path] if path.is_file() else []
        if not files:
            problems.append(f"no fit results in {path}: run `scaling fit` first (figures show data only)")
        for file in files:
            try:
                if _kind(file) == "partial":
                    partials.append(PartialFile.read(file))
                else:
                    fits.append(FitResult.read(file))
            except FitError as e:
                problems.append(f"{file} skipped: {e}")
    return fits, partials, problems


def _kind(path: Path) -> str | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # FitResult.read reports it
    return doc.get("kind") if isinstance(doc, dict) else None


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if out.returncode != 0:
        return "unknown (not a git checkout)"
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _table_hash(table: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes()).hexdigest()


def _render(ax_fn: Callable[[], Figure]) -> tuple[bytes, bytes]:
    fig = ax_fn()
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    fig.set_layout_engine("none")  # keep the positions the PNG's layout found: laid out once, not twice
    fig.savefig(svg, format="svg", metadata={"Date": None})
    return png.getvalue(), svg.getvalue()


CAPTIONS = {
    "loss_vs_params": (
        "Loss vs parameters",
        "Each marker is one run's last evaluated loss (hollow: the run is not finished). Lines are the fitted "
        "laws over the sizes they were fitted on, dotted beyond them up to the held-out size; the shaded band "
        "is the bootstrap interval of the law. The star is the held-out size's actual loss; the marker with an "
        "error bar is the law's prediction for it, and the number beside it the relative error."),
    "loss_vs_steps": (
        "Loss vs training progress",
        "The loss of each size along training, with each size's fitted curve (thick, light; of several laws, "
        "the one that fits that size best). The held-out "
        "size's curve fit is black: dashed over the steps it was fitted on, dotted beyond them to the end of "
        "the longest run (for a running size: the predicted rest of its run), with its band; the marker with "
        "whiskers is the fit's prediction of its last point from the earlier ones, the star the actual value."),
    "levels": (
        "Per-noise-level loss",
        "Top: the per-level loss ℓ(λ) of each size at its last evaluation; gray curves on the right axis are "
        "the importance weightings w(λ) (each scaled to a maximum of 1): L_iw averages ℓ(λ) with these weights. "
        "Bottom: the relative gain of each size over the smallest one at each λ, i.e. where along λ the "
        "bigger models gain."),
    "weightings": (
        "Weightings compared",
        "For each weighting of L_iw and each law: the backtest's relative error on the held-out size (bar) "
        "with its prediction interval (whiskers) and ✓ when the actual value lies inside the interval. The "
        "weighting with the shortest bars scales most predictably. Weightings are sorted by their best error."),
    "compute": (
        "Compute view",
        "Loss vs total training FLOPs of each size; the dashed black line is the compute frontier, the lowest "
        "loss reached by any size at or below each compute budget."),
}


def _figures(table: pd.DataFrame, runs: list[D.Run], fits: list[FitResult], partials: Sequence[PartialFile],
             metric: str,
             grid: np.ndarray | None, heldout: Sequence[str],
             progress: str | None) -> list[tuple[str, Callable[[], Figure]]]:
    curve_fits = [f for f in fits if D.curve_size(f) is not None and f.metric == metric]
    x = progress or next((f.columns.get("x") for f in curve_fits if f.columns.get("x") in table.columns), "step")
    levels = D.final_levels(table, runs)
    weightings = [m[len(D.IW_PREFIX):] for m in D.iw_metrics(table)]

    def one(draw: Callable, size=(7.2, 4.8)) -> Callable[[], Figure]:
        def make() -> Figure:
            fig = Figure(figsize=size, layout="constrained")
            draw(fig.add_subplot())
            return fig
        return make

    def levels_fig() -> Figure:
        fig = Figure(figsize=(7.2, 7.0), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        F.plot_level_losses(levels, grid, weightings, ax=top)
        F.plot_level_gain(levels, grid, ax=bottom)
        top.set_xlabel("")  # shared with the panel below
        return fig

    return [
        ("loss_vs_params", one(lambda ax: F.plot_loss_vs_params(runs, fits, metric=metric, ax=ax), (10.0, 4.8))),
        ("loss_vs_steps", one(lambda ax: F.plot_loss_vs_steps(D.curves(table, metric, x), runs, curve_fits,
                                                              metric=metric, x=x, heldout=heldout, ax=ax,
                                                              partials=partials if x == "step" else ()),
                             (10.0, 4.8))),
        ("levels", levels_fig),
        ("weightings", one(lambda ax: F.plot_weighting_backtest(fits, ax=ax), (7.2, 4.4))),
        ("compute", one(lambda ax: F.plot_compute(D.curves(table, metric, "flops"), runs, metric=metric, ax=ax))),
    ]


def build_report(table: pd.DataFrame, fits: Sequence[FitResult], out: str | Path, *, spec: Spec | None = None,
                 partials: Sequence[PartialFile] = (),
                 metric: str | None = None, problems: Sequence[str] = (), mlflow_uri: str | None = None,
                 title: str | None = None, progress: str | None = None) -> ReportResult:
    """Draw every figure and write `out/index.html`, `out/report.md` and `out/figures/*.{png,svg}`.

    The folder is written into a temporary sibling and renamed into place, so `out` is always either
    the previous report or the complete new one. Never refits: `fits` are drawn as they are.
    `progress` is the x of the loss-vs-progress figure (`step`, `samples` or `flops`; default: the column
    the curve fits used, else `step`)."""
    out = Path(out)
    metric = D.pick_metric(table, metric or (spec.metric if spec else None))
    D.check_table(table, metric)
    table, notes = D.numeric_table(table, metric)
    if progress is not None and progress not in table.columns:
        raise ReportError(f"--progress {progress}: the table has no {progress!r} column")
    fits = list(fits)
    problems = [*problems, *notes]
    planned = _planned_steps(spec)
    runs = D.runs_of(table, metric, planned)
    heldout = tuple(spec.fit.holdout) if spec else tuple(dict.fromkeys(
        h.label for f in fits if D.curve_size(f) is None for h in f.holdout))
    expected = tuple(spec.model.sizes) if spec else ()
    status = D.sweep_notes(runs, expected, heldout) + D.excluded_notes(fits)
    ev = spec.evaluation if spec else EvalSpec()
    grid = D.lambda_grid(ev.lambda_min, ev.lambda_max, ev.lambda_step)
    n_levels = len(D.level_columns(table))
    if n_levels and n_levels != len(grid):
        problems.append(f"the table has {n_levels} eval/level columns but the λ grid [{ev.lambda_min}, "
                        f"{ev.lambda_max}] step {ev.lambda_step} has {len(grid)} levels: per-level losses are drawn "
                        "over the level index (give the sweep file that produced the table)")
        grid = None
    elif n_levels and spec is None:
        problems.append(f"no sweep file given: the λ grid is taken to be the default [{ev.lambda_min}, "
                        f"{ev.lambda_max}] step {ev.lambda_step} ({len(grid)} levels, as many as the table has)")

    rendered, svgs = [], {}
    with matplotlib.rc_context(RC):
        for name, make in _figures(table, runs, fits, partials, metric, grid, heldout, progress):
            try:
                png, svg = _render(make)
            except (ValueError, KeyError, TypeError, FitError) as e:  # one bad input must not lose the report
                log.warning("figure %s not drawn: %s", name, e)
                problems.append(f"figure {name} could not be drawn: {e}")
                continue
            rendered.append(FigureOut(name, CAPTIONS[name][0], CAPTIONS[name][1], png))
            svgs[name] = svg

    uri = mlflow_uri or (spec.tracking.uri or "sqlite:///./mlflow.db (embedded store)" if spec else None)
    name = spec.name if spec else (str(table["sweep"].dropna().iloc[0]) if "sweep" in table and
                                   table["sweep"].notna().any() else out.name)
    page = Page(
        title=title or f"Scaling report: {name} ({short_metric(metric)})",
        description=spec.description.strip() if spec else "",
        status=tuple(status), problems=tuple(problems),
        headline=tuple(target_lines(fits, metric, spec.fit.target_error if spec else None)
                       + headline(fits, metric, heldout) + partial_headline(partials, metric)),
        figures=tuple(rendered),
        tables=(runs_table(runs, table, metric, uri), params_table(fits), backtest_table(fits),
                *([partial_table(partials)] if partials else []), warnings_table(fits)),
        provenance=(
            ("sweep file", f"{spec.source} sha256 {spec.sha256}" if spec else "not given"),
            ("git commit", _git_commit()),
            ("MLflow tracking URI", uri or "not given"),
            ("table", f"{len(table)} rows, {table['run_id'].nunique()} runs, sha256 {_table_hash(table)}"),
            ("fit results", ", ".join(f"{f.metric} {f.law} {f.axis} ({f.data_hash[:12]})" for f in fits) or "none"),
            ("generated", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")),
        ),
    )
    _write_atomically(out, page, svgs)
    log.debug("report written to %s (%d figures)", out / "index.html", len(rendered))
    return ReportResult(out, tuple(f.name for f in rendered), tuple(status), tuple(problems))


def _planned_steps(spec: Spec | None) -> dict[str, int] | None:
    if spec is None:
        return None
    from scaling.plan import plan  # pure planner (spec + size registry), no torch

    return {job.run_id: job.steps for job in plan(spec)}


def _write_atomically(out: Path, page: Page, svgs: dict[str, bytes]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        (tmp / "figures").mkdir()
        for fig in page.figures:
            (tmp / "figures" / f"{fig.name}.png").write_bytes(fig.png)
            (tmp / "figures" / f"{fig.name}.svg").write_bytes(svgs[fig.name])
        (tmp / "index.html").write_text(render_html(page), encoding="utf-8")
        (tmp / "report.md").write_text(render_markdown(page), encoding="utf-8")
        tmp.chmod(0o755)
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old.exists():
                os.replace(old, out)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def report_paths(spec: Spec | None, table: str | Path | None, fits: Sequence[str | Path] | None,
                 out: str | Path | None) -> tuple[Path, list[Path], Path]:
    """Default paths of a sweep: `runs/<sweep>/table.csv`, `fits/<sweep>/`, `reports/<sweep>/`."""
    if spec is None and (table is None or out is None):
        raise ReportError("give a sweep file (scaling report sweeps/demo.yaml) or both --table and --out")
    table_path = Path(table) if table else Path(spec.launch.workdir) / spec.name / "table.csv"
    fit_paths = [Path(p) for p in fits] if fits else ([Path("fits") / spec.name] if spec else [])
    out_path = Path(out) if out else Path("reports") / spec.name
    return table_path, fit_paths, out_path


def report_from_files(sweep: str | Path | None = None, table: str | Path | None = None,
                      fits: Sequence[str | Path] | None = None, out: str | Path | None = None, *,
                      metric: str | None = None, size_col: str | None = None, params_col: str | None = None,
                      step_col: str | None = None, mlflow_uri: str | None = None, progress: str | None = None,
                      loader: TableLoader | None = None) -> ReportResult:
    """`scaling report`: load the sweep (optional), the table (through `loader`, default `load_table`) and
    the fit files, then `build_report`. Defaults: `runs/<sweep>/table.csv`, `fits/<sweep>/`, `reports/<sweep>/`."""
    from scaling.spec import load_sweep

    spec = load_sweep(sweep) if sweep else None
    table_path, fit_paths, out_path = report_paths(spec, table, fits, out)
    frame = D.rename_columns((loader or D.load_table)(table_path), size_col, params_col, step_col)
    results, partials, problems = load_fits(fit_paths)
    results = D.rename_fit_columns(results, size_col, params_col, step_col)
    return build_report(frame, results, out_path, spec=spec, partials=partials, metric=metric, problems=problems,
                        mlflow_uri=mlflow_uri,
                        progress=progress)
