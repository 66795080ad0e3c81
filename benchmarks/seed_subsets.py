"""How much of a backtest error is the luck of the seeds: refit on subsets of the seeds of the fitted sizes.

A sweep with two seeds per size gives one backtest error of the held-out size. That error is one draw: other
seeds of the same sizes give other errors. This study takes a table with more seeds at the fitted sizes
(`--run` trains them: the sweep's fitted sizes with seeds 0..n-1, its held-out sizes with their own seeds),
refits every law of the sweep on subsets of those seeds (the held-out size keeps all its runs) and prints,
per weighting, law and design, the median and largest |error|, how many subsets predict within the sweep's
`fit.target_error`, and how many intervals hold the actual value. Two kinds of design:

- `--k 2,3`: every k-subset of the seeds, the same seeds at every fitted size;
- `--design S=4,M=4,L=2 --draws 20`: seeds drawn at random for each size separately (seeded, reproducible),
  k of them at the sizes named (the others: `--k`'s first value).

    PYTHONPATH=$PWD python -m benchmarks.seed_subsets --run --seeds 5 --folder /tmp/seeds   # trains, then fits
    PYTHONPATH=$PWD python -m benchmarks.seed_subsets --table /tmp/seeds/table.csv --k 2,3 --laws power_offset
    PYTHONPATH=$PWD python -m benchmarks.seed_subsets --table /tmp/seeds/table.csv --design S=4,M=4,L=2 --draws 20

The fits are those of `scaling fit` (the sweep's `fit:` block: laws, x, holdout, bootstrap resamples, loss and
delta; `--loss`, `--delta` override the last two), without leave-one-size-out, one fit per CPU at a time.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.overhead import DEMO

Selection = tuple[tuple[str, tuple[int, ...]], ...]
"The seeds used at each fitted size: ((size, seeds), ...)."


@dataclass(frozen=True)
class SubsetFigures:
    """The backtest of one (metric, law, design) over its subsets of the seeds."""

    metric: str
    law: str
    design: str
    "`k=2` (the same k seeds at every fitted size) or `S=4,M=4,L=2` (drawn per size)."
    errors: tuple[float, ...]
    "Relative error of the held-out prediction, one per subset."
    inside: tuple[bool, ...]
    subsets: tuple[Selection, ...]
    flat: tuple[bool, ...] = ()
    "Whether each fit warned that its optimum is not unique (other parameters fit as well, predict otherwise)."

    @property
    def median_abs(self) -> float:
        return statistics.median(abs(e) for e in self.errors)

    @property
    def max_abs(self) -> float:
        return max(abs(e) for e in self.errors)

    def within(self, target: float) -> int:
        return sum(abs(e) <= target for e in self.errors)


def _fit_one(args) -> tuple[float, bool, bool]:
    table, selection, law, metric, x, holdout, bootstrap, loss, delta = args
    from scaling.fit.api import NOT_UNIQUE, FitOptions, fit_size_law

    keep = table["size"].astype(str).isin(holdout)
    for size, seeds in selection:
        keep |= (table["size"].astype(str) == size) & table["seed"].isin(seeds)
    r = fit_size_law(table[keep], law, metric, [x], holdout=holdout,
                     opts=FitOptions(bootstrap=bootstrap, workers=1, loss=loss, delta=delta), loso=False)
    p = next(p for p in r.holdout if p.relative_error is not None)
    return p.relative_error, bool(p.inside), any(w.startswith(NOT_UNIQUE) for w in r.warnings)


def seeds_per_size(table, holdout: list[str]) -> dict[str, list[int]]:
    """The seeds of each fitted size (smallest size first when the table has `params`)."""
    held = table["size"].astype(str).isin(holdout)
    if not held.any():
        raise SystemExit(f"error: the table has no run of the held-out size(s) {', '.join(holdout)}")
    fitted = table[~held]
    if "params" in fitted.columns:
        fitted = fitted.sort_values("params", kind="stable")
    return {str(size): sorted(set(g["seed"])) for size, g in fitted.groupby("size", sort=False)}


def same_seed_subsets(seeds: dict[str, list[int]], k: int) -> list[Selection]:
    """Every k-subset of the seeds that every fitted size has, used at every size."""
    common = sorted(set.intersection(*(set(s) for s in seeds.values())))
    if not 1 <= k <= len(common):
        raise SystemExit(f"error: k={k} is not between 1 and the {len(common)} seeds every fitted size has "
                         f"({', '.join(map(str, common))})")
    return [tuple((size, sub) for size in seeds) for sub in itertools.combinations(common, k)]


def drawn_subsets(seeds: dict[str, list[int]], design: dict[str, int], draws: int, seed: int = 0) -> list[Selection]:
    """`draws` selections, each size's seeds drawn at random (without replacement) independently."""
    unknown = sorted(set(design) - set(seeds))
    if unknown:
        raise SystemExit(f"error: the design names size {unknown[0]}, which is not a fitted size of the table "
                         f"({', '.join(seeds)})")
    for size, k in design.items():
        if not 1 <= k <= len(seeds[size]):
            raise SystemExit(f"error: {size}={k} is not between 1 and the {len(seeds[size])} seeds of {size}")
    rng = random.Random(seed)
    return [tuple((size, tuple(sorted(rng.sample(s, design[size])))) for size, s in seeds.items())
            for _ in range(draws)]


def study(table, metrics: list[str], laws: list[str], designs: dict[str, list[Selection]], x: str = "params",
          holdout: list[str] = ("XL",), bootstrap: int = 1000, processes: int | None = None, loss: str = "huber",
          delta: float = 1e-3) -> list[SubsetFigures]:
    """Refit every (metric, law) on every selection of every design; one `SubsetFigures` per combination."""
    holdout = [str(h) for h in holdout]
    base = [c for c in ("run_id", "size", "seed", "step", "status", "params", x) if c in table.columns]
    slim = {m: table[list(dict.fromkeys([*base, m]))] for m in metrics}  # each job pickles its table: only what it fits
    jobs, keys = [], []
    for metric, law, (name, selections) in itertools.product(metrics, laws, designs.items()):
        for sel in selections:
            jobs.append((slim[metric], sel, law, metric, x, holdout, bootstrap, loss, delta))
            keys.append((metric, law, name, sel))
    from scaling.fit.core import usable_cpus

    with ProcessPoolExecutor(processes or usable_cpus()) as ex:
        results = list(ex.map(_fit_one, jobs))
    out = []
    for (metric, law, name), group in itertools.groupby(zip(keys, results), key=lambda kr: kr[0][:3]):
        group = list(group)
        out.append(SubsetFigures(metric, law, name, tuple(r[0] for _, r in group), tuple(r[1] for _, r in group),
                                 tuple(key[3] for key, _ in group), tuple(r[2] for _, r in group)))
    return out


def table_lines(figures: list[SubsetFigures], target: float) -> list[str]:
    head = ["weighting", "law", "design", "subsets", "median |err|", "max |err|", f"within {target:.0%}", "inside",
            "not unique"]
    rows = [[f.metric.removeprefix("eval/iw/"), f.law, f.design, str(len(f.errors)), f"{f.median_abs:.2%}",
             f"{f.max_abs:.2%}", f"{f.within(target)}/{len(f.errors)}", f"{sum(f.inside)}/{len(f.inside)}",
             f"{sum(f.flat)}/{len(f.flat)}"] for f in figures]
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]
    return ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [head, *rows]]


def train_seeds(sweep: Path, folder: Path, n: int) -> Path:
    """Run the sweep's fitted sizes with seeds 0..n-1 and its held-out sizes with its own seeds (two `scaling
    run`s in `folder`); returns the joined table."""
    import pandas as pd

    from benchmarks.demo import run_demo
    from scaling.spec import load_sweep

    spec = load_sweep(sweep)
    data = yaml.safe_load(sweep.read_text())
    holdout = list(spec.holdout)
    sizes = data["model"]["sizes"]
    fitted = {k: v for k, v in sizes.items() if str(k) not in holdout}
    parts = {"fitted": (fitted, {"default": list(range(n))}, [list(fitted)[-1]]),
             "heldout": ({k: v for k, v in sizes.items() if str(k) in holdout},
                         {h: list(spec.seeds_for(h)) for h in holdout}, [])}
    tables = []
    for name, (chosen, seeds, fit_holdout) in parts.items():
        # the fitted sizes hold out their largest (so that `run` can fit); the held-out sizes alone fit nothing
        d = {**data, "model": {**data["model"], "sizes": chosen}, "train": {**data["train"], "seeds": seeds},
             "fit": {**data.get("fit", {}), "holdout": fit_holdout}}
        path = folder / f"{name}.yaml"
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        print(f"training {name}: sizes {', '.join(map(str, chosen))}, seeds {seeds}", flush=True)
        r = run_demo(path, folder / name)
        if r["table"] is None:
            raise SystemExit(f"error: `scaling run` of {path} left no table (exit {r['exit']}):\n{r['output']}")
        tables.append(pd.read_csv(r["table"]))
    out = folder / "table.csv"
    pd.concat(tables, ignore_index=True).to_csv(out, index=False)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", type=Path, default=DEMO, help="its fit: block (laws, x, holdout, bootstrap, target)")
    p.add_argument("--table", type=Path, help="a table with several seeds per fitted size (`scaling export`)")
    p.add_argument("--run", action="store_true", help="train the seeds first (the sweep's sizes, in --folder)")
    p.add_argument("--seeds", type=int, default=5, help="--run: seeds 0..n-1 at the fitted sizes (default 5)")
    p.add_argument("--folder", type=Path, default=Path("seed-subsets"), help="--run: work folder")
    p.add_argument("--k", default="2,3", help="subset sizes, the same seeds at every size (default 2,3)")
    p.add_argument("--design", action="append", default=[],
                   help="seeds per size drawn at random, e.g. S=4,M=4,L=2 (other sizes: the first --k); repeatable")
    p.add_argument("--draws", type=int, default=20, help="random selections per --design (default 20)")
    p.add_argument("--metrics", default=None, help="comma-separated (default: every eval/iw/* column)")
    p.add_argument("--laws", default=None, help="comma-separated (default: the sweep's fit.laws)")
    p.add_argument("--bootstrap", type=int, default=None, help="resamples per fit (default: the sweep's)")
    p.add_argument("--loss", choices=("huber", "squares"), default=None, help="fit objective (default: fit.loss)")
    p.add_argument("--delta", type=float, default=None, help="Huber delta (default: fit.delta)")
    args = p.parse_args(argv)
    import pandas as pd

    from scaling.spec import load_sweep

    spec = load_sweep(args.sweep)
    if args.run:
        args.table = train_seeds(args.sweep, args.folder, args.seeds)
    if args.table is None:
        p.error("give --table, or --run to train the seeds")
    table = pd.read_csv(args.table)
    missing = [c for c in ("size", "seed", spec.fit.x) if c not in table.columns]
    if missing:
        raise SystemExit(f"error: {args.table} has no column {missing[0]!r}; export it with `scaling export`")
    metrics = args.metrics.split(",") if args.metrics else sorted(c for c in table.columns if c.startswith("eval/iw/"))
    laws = args.laws.split(",") if args.laws else list(spec.fit.laws)
    holdout = list(spec.holdout)
    ks = [int(k) for k in args.k.split(",")]
    seeds = seeds_per_size(table, holdout)
    designs = {} if args.design else {f"k={k}": same_seed_subsets(seeds, k) for k in ks}
    for text in args.design:
        try:
            design = {size: int(k) for size, k in (item.split("=") for item in text.split(","))}
        except ValueError:
            p.error(f"--design {text!r}: expected SIZE=K,SIZE=K (e.g. S=4,M=4,L=2)")
        design = {size: design.get(size, ks[0]) for size in seeds} | design
        designs[",".join(f"{s}={k}" for s, k in design.items())] = drawn_subsets(seeds, design, args.draws)
    loss, delta = args.loss or spec.fit.loss, spec.fit.delta if args.delta is None else args.delta
    figures = study(table, metrics, laws, designs, spec.fit.x, holdout, args.bootstrap or spec.fit.bootstrap,
                    loss=loss, delta=delta)
    target = spec.fit.target_error or 0.02
    objective = "least squares" if loss == "squares" else f"Huber delta {delta:g}"
    print(f"backtest of {', '.join(holdout)} over subsets of the seeds ({args.table}), {objective}; 'not unique': "
          "fits whose optimum is not unique (other parameters fit as well and predict otherwise):")
    for line in table_lines(figures, target):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
