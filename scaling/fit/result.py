"""`FitResult`: what a fit found, as frozen dataclasses that round-trip through plain JSON.

The JSON schema (version 1) is documented field by field in docs/fitting.md; the dataclass fields below
are the JSON keys. `report` reads these files with `FitResult.read(path)` and never refits: everything
needed to draw a fitted curve and its band is here (`params`, `bootstrap.samples`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from scaling.errors import FitError
from scaling.fit.plain import from_plain
from scaling.laws import get_law

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ParamEstimate:
    """One fitted parameter."""

    name: str
    value: float
    "Best fit on all points used (natural units)."
    interval: tuple[float, float] | None
    "Bootstrap percentile interval at `FitResult.level`; None without a bootstrap."
    lower: float
    "The law's lower bound."
    upper: float
    "The law's upper bound."
    on_bound: bool
    "The best fit sits on a bound: the data do not determine this parameter."


@dataclass(frozen=True)
class Point:
    """One data point used by the fit, with the fitted value there."""

    run_id: str
    size: str
    x: dict[str, float]
    "Input values by table column, e.g. {'params': 3.2e7} or {'params': 1.9e8, 'tokens': 3.8e9}."
    y: float
    "Observed metric."
    predicted: float
    "The fitted law at x."
    residual: float
    "log(y) - log(predicted): the quantity the Huber loss is taken of."


@dataclass(frozen=True)
class Prediction:
    """The law's prediction at a point, compared with the actual value when there is one."""

    label: str
    "What is predicted, e.g. the size 'XL', or 'XL@600' for a step on a curve."
    x: dict[str, float]
    predicted: float
    interval: tuple[float, float] | None
    "Bootstrap percentile interval of the prediction at `FitResult.level` (uncertainty of the law, not of one run)."
    actual: float | None = None
    "The observed value (mean over the runs at this point), None when not (yet) observed."
    relative_error: float | None = None
    "(predicted - actual) / actual."
    inside: bool | None = None
    "actual lies inside `interval`."
    runs: tuple[str, ...] = ()
    "Run ids behind `actual`."


@dataclass(frozen=True)
class Bootstrap:
    """How the intervals were made."""

    resamples: int
    "Resamples asked for (0: no intervals)."
    succeeded: int
    "Resamples whose fit converged and was identifiable; intervals use only these."
    unit: str = "run"
    "What was resampled with replacement: whole runs (all points of a run together)."
    seed: int = 0
    samples: tuple[tuple[float, ...], ...] = ()
    "Up to 200 bootstrap parameter vectors (natural units, in the law's parameter order) to draw bands."


@dataclass(frozen=True)
class FitResult:
    """One fit of one law to one metric over one axis. Keys of the JSON file = these fields."""

    name: str
    "Fit set name: the sweep name or `--name`; files live in fits/<name>/."
    metric: str
    "Table column fitted, e.g. eval/iw/laplace."
    law: str
    "Key in scaling.laws.LAWS."
    axis: str
    "`params` (or the x column) for a law over sizes; `steps-<size>` for the curve of one size."
    columns: dict[str, str]
    "Law input -> table column, e.g. {'x': 'params'} or {'N': 'params', 'D': 'tokens'}."
    formula: str
    "Fitted law in plain text, e.g. 'y = 0.369·x^-0.030'."
    formula_latex: str
    "The same in LaTeX."
    params: tuple[ParamEstimate, ...]
    level: float
    "Confidence level of every interval, e.g. 0.95."
    loss: str
    "'huber' (on log residuals, robust, default) or 'squares' (least squares on log residuals)."
    delta: float
    "Huber δ."
    objective: float
    "Final value of the loss summed over points."
    converged: bool
    bootstrap: Bootstrap
    data_hash: str
    "sha256 of the points used (run ids, x, y): same hash and law -> same result."
    sizes: tuple[str, ...]
    "Sizes whose points were used."
    points: tuple[Point, ...]
    "Points used, with fitted values and residuals."
    excluded: tuple[dict[str, str], ...] = ()
    "Runs or rows left out and why, e.g. {'run_id': ..., 'reason': 'status RUNNING'}."
    holdout: tuple[Prediction, ...] = ()
    "Backtest: sizes (or steps) held out of the fit, predicted and compared with what was observed."
    leave_one_size_out: tuple[Prediction, ...] = ()
    "Each size in turn left out of the fit and predicted from the rest."
    warnings: tuple[str, ...] = ()
    "Why the fit may not be trusted (too few points, parameters on bounds, wide intervals...)."
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)
    "Free-form details (e.g. the holdout sizes asked for)."

    # --- use ---------------------------------------------------------------------------------------
    @property
    def values(self) -> dict[str, float]:
        return {p.name: p.value for p in self.params}

    def predict(self, *inputs) -> np.ndarray:
        """The fitted law at the inputs (in the law's input order, natural units)."""
        return get_law(self.law)(*inputs, **self.values)

    def band(self, *inputs) -> tuple[np.ndarray, np.ndarray] | None:
        """Percentile band of the law over `inputs` from the stored bootstrap samples (None without)."""
        if not self.bootstrap.samples:
            return None
        law = get_law(self.law)
        ys = np.stack([law(*inputs, **dict(zip(law.names, s))) for s in self.bootstrap.samples])
        q = 100 * (1 - self.level) / 2
        return np.percentile(ys, q, axis=0), np.percentile(ys, 100 - q, axis=0)

    # --- JSON --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = _clean(asdict(self))
        return {"schema_version": d.pop("schema_version"), **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> FitResult:
        """The result a fit file holds; FitError naming the first key that is missing, unknown or of a wrong
        type or value (e.g. parameters that are not those of the law)."""
        if not isinstance(d, dict):
            raise FitError(f"a fit file holds a JSON object, not {type(d).__name__}")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise FitError(f"fit file has schema_version {version!r}; this scaling reads {SCHEMA_VERSION}")
        result = from_plain(cls, d, "fit")
        law = get_law(result.law)
        names = [p.name for p in result.params]
        if names != list(law.names):
            raise FitError(f"fit.params: {names} are not the parameters of {law.name} ({', '.join(law.names)})")
        if sorted(result.columns) != sorted(law.inputs):
            raise FitError(f"fit.columns: {sorted(result.columns)} are not the inputs of {law.name} "
                           f"({', '.join(law.inputs)})")
        if not 0 < result.level < 1:
            raise FitError(f"fit.level: {result.level} is not a confidence level between 0 and 1")
        if any(len(s) != len(names) for s in result.bootstrap.samples):
            raise FitError(f"fit.bootstrap.samples: every sample needs {len(names)} values ({', '.join(names)})")
        return result

    @classmethod
    def from_json(cls, text: str) -> FitResult:
        return cls.from_dict(json.loads(text))

    def write(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically (temp file in the same folder, then rename)."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> FitResult:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError, FitError) as e:
            raise FitError(f"{path}: not a readable fit file ({e})") from e


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temp file next to `path`, then rename it over `path` (readers never see half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path



def _clean(obj):
    """JSON-safe: numpy scalars -> Python, tuples -> lists, non-finite floats -> None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def fit_filename(metric: str, law: str, axis: str) -> str:
    """`eval/iw/laplace`, `power`, `params` -> `iw-laplace__power__params.json`."""
    short = metric[len("eval/"):] if metric.startswith("eval/") else metric
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in short.replace("/", "-"))
    return f"{safe}__{law}__{axis}.json"
