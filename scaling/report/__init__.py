"""Scaling reports: figures, tables and pages built from the tidy table and the fit results.

Never refits (the laws are evaluated from `FitResult`s) and never imports torch, submitit or mlflow.
`build_report(table, fits, out)` writes `out/index.html` (self-contained), `out/report.md` and
`out/figures/<name>.png|svg`. See docs/reports.md for how to read one.
"""

from scaling.report.build import ReportResult, build_report, load_fits, report_from_files, report_paths
from scaling.report.data import lambda_grid, load_table, rename_columns
from scaling.report.figures import (
    plot_compute,
    plot_level_gain,
    plot_level_losses,
    plot_loss_vs_params,
    plot_loss_vs_steps,
    plot_weighting_backtest,
)

__all__ = [
    "ReportResult", "build_report", "lambda_grid", "load_fits", "load_table", "plot_compute", "plot_level_gain",
    "plot_level_losses", "plot_loss_vs_params", "plot_loss_vs_steps", "plot_weighting_backtest", "rename_columns",
    "report_from_files", "report_paths",
]
