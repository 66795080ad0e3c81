"""Fit scaling laws to a tidy table of results; bootstrap intervals; backtests; plain-JSON results.

Imports numpy, scipy and pandas only (never torch, submitit or mlflow): anyone with a CSV can use it.
See docs/fitting.md.
"""

from scaling.fit.result import SCHEMA_VERSION, Bootstrap, FitResult, ParamEstimate, Point, Prediction, fit_filename

__all__ = ["SCHEMA_VERSION", "Bootstrap", "FitResult", "ParamEstimate", "Point", "Prediction", "fit_filename"]
