"""Weightings named by a table's `eval/iw/<label>` columns, evaluated with `scaling.weightings`.

The formulas (with their sources) live once, in numpy, in `scaling/weightings.py`, which the trainer's
evaluation uses too; the report only reads a column label back into a weighting. Only the shape matters
for the figure: each curve is drawn scaled to a maximum of 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from scaling.errors import ReportError
from scaling.spec import WEIGHTINGS, Weighting
from scaling.weightings import weight_np


def parse_label(label: str) -> tuple[str, dict[str, float]]:
    """`laplace` -> ('laplace', defaults); `laplace_b1` -> ('laplace', {mu: 0, b: 1}) (see `Weighting.label`)."""
    for name in sorted(WEIGHTINGS, key=len, reverse=True):
        if label != name and not label.startswith(name + "_"):
            continue
        params = dict(WEIGHTINGS[name])
        rest = label[len(name) + 1:]
        for part in filter(None, rest.split("_")):
            key = next((k for k in sorted(params, key=len, reverse=True) if part.startswith(k)), None)
            try:
                if key is None:
                    raise ValueError(part)
                params[key] = float(part[len(key):])
            except ValueError:
                raise ReportError(f"cannot read weighting parameters from {label!r}: {part!r} is not "
                                  f"<parameter><number> with a parameter of {name!r} ({', '.join(params) or 'none'})"
                                  ) from None
        return name, params
    raise ReportError(f"unknown weighting {label!r} in the table; known: {', '.join(WEIGHTINGS)}")


def weight(label: str, lam: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
    """w(λ) of the weighting named `label` (a column suffix of `eval/iw/<label>`) on the grid `lam`."""
    name, parsed = parse_label(label)
    values = dict(params) if params is not None else parsed
    return weight_np(Weighting.from_yaml({"name": name, **values}, "weighting"), np.asarray(lam, dtype=float))
