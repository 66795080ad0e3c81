"""Seeded synthetic tidy tables for the fit tests (a known law plus log-normal noise)."""

from __future__ import annotations

import numpy as np
import pandas as pd

SIZES = {"S": 90_000, "M": 330_000, "L": 950_000, "XL": 1_900_000}
TRUTH = {"E": 0.30, "A": 40.0, "alpha": 0.35, "B": 6.0, "beta": 0.45}


def law_value(n, s, E, A, alpha, B, beta):
    return E + A * np.asarray(n, float) ** -alpha + B * np.asarray(s, float) ** -beta


def tidy_table(seed: int = 0, sizes: dict[str, int] = SIZES, seeds: int = 1, steps: int = 600, every: int = 50,
               noise: float = 0.003, truth: dict = TRUTH, status: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (run, step) like `scaling export`: eval/iw/laplace from `truth`, eval/iw/uniform 1.3x it."""
    rng = np.random.default_rng(seed)
    rows = []
    for size, n in sizes.items():
        for s in range(seeds):
            run = f"demo-{size}-{steps}-s{s}"
            for step in range(0, steps + 1, every):
                y = law_value(n, max(step, 1), **truth) * np.exp(rng.normal(0, noise))
                rows.append({"run_id": run, "sweep": "demo", "size": size, "params": n, "budget": str(steps),
                             "seed": s, "status": (status or {}).get(size, "FINISHED"), "step": step,
                             "samples": step * 64, "flops": step * 64 * 6.0 * n,
                             "eval/iw/laplace": y, "eval/iw/uniform": 1.3 * y * np.exp(rng.normal(0, noise))})
    return pd.DataFrame(rows)
