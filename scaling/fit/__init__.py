"""Fit scaling laws to a tidy table of results; bootstrap intervals; backtests; plain-JSON results.

Imports numpy, scipy, pandas and threadpoolctl only (never torch, submitit or mlflow): anyone with a CSV
can use it. See docs/fitting.md.

    from scaling.fit import load_table, fit_size_law
    r = fit_size_law(load_table("table.csv"), "power", "eval/iw/laplace", ["params"], holdout=["XL"])
    print(r.formula, r.holdout[0].predicted, r.holdout[0].interval)
"""

from scaling.fit.api import FitOptions, Target, fit_curve, fit_size_law
from scaling.fit.partial import PartialPrediction, predict_final_from_partial
from scaling.fit.result import SCHEMA_VERSION, Bootstrap, FitResult, ParamEstimate, Point, Prediction, fit_filename
from scaling.fit.run import FitOutcome, FitPlan, fit_table, iw_metrics
from scaling.fit.table import Columns, load_table

__all__ = ["SCHEMA_VERSION", "Bootstrap", "Columns", "FitOptions", "FitOutcome", "FitPlan", "FitResult",
           "ParamEstimate", "PartialPrediction", "Point", "Prediction", "Target", "fit_curve", "fit_filename",
           "fit_size_law", "fit_table", "iw_metrics", "load_table", "predict_final_from_partial"]
