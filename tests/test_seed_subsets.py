"""benchmarks/seed_subsets.py: the backtest of the held-out size refitted on every k-subset of the seeds."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.seed_subsets import drawn_subsets, same_seed_subsets, seeds_per_size, study, table_lines

PARAMS = {"S": 2e4, "M": 4e4, "L": 1e5, "XL": 2.5e5}


def law(n: float) -> float:
    return 0.05 + 20.0 * n ** -0.65


def seeded_table(spread: dict[int, float]) -> pd.DataFrame:
    """Final L_iw of S/M/L at each seed (the law times 1 + spread[seed] at M only), XL exactly on the law."""
    rows = []
    for size, n in PARAMS.items():
        for seed in (spread if size != "XL" else [0, 1]):
            value = law(n) * (1 + (spread[seed] if size == "M" else 0.0))
            rows.append({"run_id": f"t-{size}-s{seed}", "size": size, "seed": seed, "params": n, "step": 600,
                         "status": "FINISHED", "eval/iw/laplace": value})
    return pd.DataFrame(rows)


def designs(table, ks):
    seeds = seeds_per_size(table, ["XL"])
    return {f"k={k}": same_seed_subsets(seeds, k) for k in ks}


def test_seeds_on_the_law_predict_exactly_and_a_lucky_seed_moves_the_error():
    t = seeded_table({0: 0.0, 1: 0.0, 2: 0.0})
    exact = study(t, ["eval/iw/laplace"], ["power_offset"], designs(t, [2, 3]), bootstrap=30, processes=1)
    assert [(f.design, len(f.errors)) for f in exact] == [("k=2", 3), ("k=3", 1)]
    assert all(abs(e) < 1e-3 for f in exact for e in f.errors)

    # seed 2's M is 6% high: only the subsets with seed 2 are pulled off the law
    t = seeded_table({0: 0.0, 1: 0.0, 2: 0.06})
    off = study(t, ["eval/iw/laplace"], ["power_offset"], designs(t, [2]), bootstrap=30, processes=2)[0]
    assert [dict(sel)["M"] for sel in off.subsets] == [(0, 1), (0, 2), (1, 2)]
    assert all(dict(sel)["S"] == dict(sel)["M"] == dict(sel)["L"] for sel in off.subsets)
    assert abs(off.errors[0]) < 1e-3 and abs(off.errors[1]) > 2e-3 and off.errors[1] == pytest.approx(off.errors[2])
    assert off.within(0.001) == 1 and off.median_abs == pytest.approx(abs(off.errors[1]))
    lines = table_lines([off], 0.02)
    assert lines[0].split()[:3] == ["weighting", "law", "design"]
    assert lines[1].split()[:4] == ["laplace", "power_offset", "k=2", "3"]


def test_drawn_designs_pick_seeds_per_size_reproducibly():
    seeds = seeds_per_size(seeded_table({0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}), ["XL"])
    assert seeds == {"S": [0, 1, 2, 3], "M": [0, 1, 2, 3], "L": [0, 1, 2, 3]}
    a = drawn_subsets(seeds, {"S": 3, "M": 3, "L": 1}, draws=12, seed=1)
    assert a == drawn_subsets(seeds, {"S": 3, "M": 3, "L": 1}, draws=12, seed=1)
    assert all([len(s) for _, s in sel] == [3, 3, 1] for sel in a)
    assert len({sel for sel in a}) > 1 and len({dict(sel)["L"] for sel in a}) > 1  # sizes drawn independently
    with pytest.raises(SystemExit, match="S=5 is not between 1 and the 4 seeds of S"):
        drawn_subsets(seeds, {"S": 5}, draws=1)
    with pytest.raises(SystemExit, match="names size XL, which is not a fitted size"):
        drawn_subsets(seeds, {"XL": 1}, draws=1)


def test_a_k_larger_than_the_seeds_is_refused():
    with pytest.raises(SystemExit, match="k=4 is not between 1 and the 3 seeds"):
        designs(seeded_table({0: 0.0, 1: 0.0, 2: 0.0}), [4])
    with pytest.raises(SystemExit, match="no run of the held-out size"):
        designs(seeded_table({0: 0.0, 1: 0.0})[lambda t: t["size"] != "XL"], [1])


def test_the_study_fits_with_the_given_objective_and_counts_flat_optima():
    # two seeds 3% above and below the law at every fitted size: their means are on the law
    rows = []
    for size, n in PARAMS.items():
        for seed, f in enumerate((1.0, 1.0) if size == "XL" else (1.03, 0.97)):
            rows.append({"run_id": f"t-{size}-s{seed}", "size": size, "seed": seed, "params": n, "step": 600,
                         "status": "FINISHED", "eval/iw/laplace": law(n) * f})
    t = pd.DataFrame(rows)
    huber, squares = (study(t, ["eval/iw/laplace"], ["power_offset"], designs(t, [2]), bootstrap=20, processes=1,
                            loss=loss)[0] for loss in ("huber", "squares"))
    assert huber.flat == (True,) and squares.flat == (False,)
    assert abs(squares.errors[0]) < 1e-3  # least squares: through the means, so on the law at XL
    assert table_lines([huber], 0.02)[1].split()[-1] == "1/1"
