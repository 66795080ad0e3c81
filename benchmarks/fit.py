"""Fit speed: `power` on 4 points, and `chinchilla` on 250 points with 1,000 bootstrap resamples.

Targets (issue #6): chinchilla fit + 1,000 resamples < 10 s on the 2-core machine; power on 4 points
well under 1 s. Also measures whether 2 bootstrap processes pay off (they decide `default_workers`).

    PYTHONPATH=$PWD python benchmarks/fit.py            # add --quick for 200 resamples
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from scaling.fit import FitOptions, fit_size_law
from scaling.fit.core import bootstrap, default_workers, fit_arrays
from scaling.laws import get_law


def timed(fn, repeat: int = 1) -> tuple[float, float, object]:
    """(best wall seconds, its CPU seconds, last result)."""
    best, cpu, out = float("inf"), 0.0, None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        w = time.perf_counter() - w0
        if w < best:
            best, cpu = w, time.process_time() - c0
    return best, cpu, out


def chinchilla_points(n: int = 250, seed: int = 0):
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e9), n))
    D = N * np.exp(rng.uniform(np.log(5), np.log(200), n))
    y = get_law("chinchilla")(N, D, E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28) * np.exp(rng.normal(0, 0.01, n))
    return np.stack([N, D]), y


def scaling_fit(argv: list[str]) -> tuple[float, int]:
    """Wall seconds of `scaling fit ARGV` in this process (imports done beforehand), and its exit status."""
    import contextlib
    import io

    import scaling.fit  # noqa: F401  (scipy, pandas: imported before timing)
    from scaling.cli import build_parser

    args = build_parser().parse_args(["fit", *argv])
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        code = args.func(args)
        return time.perf_counter() - start, code


def demo_fit(sweep: str, table: str, out: str, resamples: int = 1000) -> dict[str, float]:
    """The demo's fits on a table of its runs: the primary metric with the sweep's laws, holdout and `resamples`
    bootstrap resamples (`primary_s`), and the whole `scaling fit` (every weighting and the loss curves of
    every size, `all_s`); `exit` is 2 when some fit could not be made (it says which on its output)."""
    from scaling.spec import load_sweep

    spec = load_sweep(sweep)
    base = [sweep, "--table", table, "--out", out, "--bootstrap", str(resamples)]
    primary, code = scaling_fit([*base, "--metric", spec.metric, "--no-curves"])
    every, code_all = scaling_fit(base)
    return {"primary_s": primary, "all_s": every, "laws": len(spec.fit.laws), "exit": code or code_all}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="200 resamples")
    args = ap.parse_args()
    B = 200 if args.quick else args.resamples
    print(f"cpus: {os.cpu_count()}  load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    law = get_law("power")
    x = np.array([32.28e6, 128.56e6, 454.98e6, 671.32e6])
    y = 0.369 * x ** -0.030 * np.exp(np.random.default_rng(0).normal(0, 0.002, 4))
    w, c, opt = timed(lambda: fit_arrays(law, x[None], y), repeat=5)
    print(f"power, 4 points, fit:                         {w * 1e3:7.1f} ms wall ({c * 1e3:.1f} ms CPU)")
    w, c, boot = timed(lambda: bootstrap(law, x[None], y, opt.theta, np.arange(4), B=B, workers=1), repeat=3)
    print(f"power, 4 points, {B} resamples (serial):     {w:7.2f} s wall ({c:.2f} s CPU), {len(boot)} fitted")
    import pandas as pd
    table = pd.DataFrame({"run_id": list("abcd"), "size": ["S", "M", "L", "XL"], "params": x, "loss": y})
    w, c, r = timed(lambda: fit_size_law(table, "power", "loss", ["params"], holdout=["XL"],
                                         opts=FitOptions(bootstrap=B, loso_bootstrap=200)), repeat=2)
    print(f"power, 4 points, fit_size_law (holdout XL, {B} resamples + leave-one-size-out): {w:.2f} s wall")

    law = get_law("chinchilla")
    X, y = chinchilla_points()
    w_fit, c_fit, opt = timed(lambda: fit_arrays(law, X, y))
    print(f"chinchilla, 250 points, fit (5400-point grid + 8 L-BFGS-B starts): {w_fit:6.2f} s wall ({c_fit:.2f} s CPU)")
    for workers in (1, 2):
        child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        w, c, boot = timed(lambda workers=workers: bootstrap(law, X, y, opt.theta, np.arange(250), B=B,
                                                             workers=workers))
        child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        c += (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
        print(f"chinchilla, 250 points, {B} resamples, {workers} process(es): {w:6.2f} s wall "
              f"({c:.2f} s CPU incl. workers), {len(boot)} fitted; fit + bootstrap = {w_fit + w:.2f} s wall")
    print(f"default bootstrap processes here: {default_workers(B, 250)}")


if __name__ == "__main__":
    main()
