"""Fitting: reference formulas, parameter recovery, real OLMo ladder predictions, bootstrap, backtests,
bad input, JSON files and the `scaling fit` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scaling.cli import main
from scaling.errors import FitError, SpecError
from scaling.fit import (
    FitOptions,
    FitPlan,
    FitResult,
    fit_curve,
    fit_size_law,
    fit_table,
    load_table,
    predict_final_from_partial,
)
from scaling.fit.core import bootstrap, fit_arrays
from scaling.laws import LAWS, Law, Param, get_law, register
from scaling.spec import load_sweep

from .fit_helpers import SIZES, TRUTH, law_value, tidy_table

OLMO = Path(__file__).parent / "data" / "olmo-ladder" / "final_checkpoints.csv"
FAST = FitOptions(bootstrap=60, loso_bootstrap=20)


def points_table(x, y, size_names=None, runs=None) -> pd.DataFrame:
    n = len(x)
    return pd.DataFrame({"run_id": runs or [f"r{i}" for i in range(n)],
                         "size": size_names or [f"s{i}" for i in range(n)],
                         "params": x, "status": "FINISHED", "step": 100, "loss": y})


# --- the reference formulas --------------------------------------------------------------------------

def test_reproduces_reference_power_law_over_params():
    x = np.array([32.28e6, 128.56e6, 454.98e6, 671.32e6])       # the reference's S, M, L, XL
    r = fit_size_law(points_table(x, 0.369 * x ** -0.030), "power", "loss", ["params"], opts=FAST, loso=False)
    assert r.formula == "y = 0.369·x^-0.030"
    assert r.values["a"] == pytest.approx(0.369, rel=1e-6)
    assert r.values["b"] == pytest.approx(0.030, rel=1e-6)
    assert r.converged and not any(p.on_bound for p in r.params)


def test_reproduces_reference_power_offset_law():
    # y = 0.303 + 1.4e5·x^-0.140: the floor E is only identifiable where the power term is comparable to
    # it, i.e. x ~ 1e33..1e48 (the power term falls from ~3 to ~0.03 there).
    x = np.logspace(33.3, 47.6, 12)
    y = 0.303 + 1.4e5 * x ** -0.140
    r = fit_size_law(points_table(x, y), "power_offset", "loss", ["params"], opts=FAST, loso=False)
    assert r.formula == "y = 0.303 + 1.4e5·x^-0.140"
    for name, true in (("E", 0.303), ("a", 1.4e5), ("b", 0.140)):
        assert r.values[name] == pytest.approx(true, rel=1e-4), name


def test_recovers_known_chinchilla_parameters_from_seeded_noisy_data():
    rng = np.random.default_rng(7)
    truth = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}       # Hoffmann et al.'s fit
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e9), 250))
    D = N * np.exp(rng.uniform(np.log(5), np.log(200), 250))
    y = get_law("chinchilla")(N, D, **truth) * np.exp(rng.normal(0, 0.01, 250))
    law = get_law("chinchilla")
    opt = fit_arrays(law, np.stack([N, D]), y)
    boot = bootstrap(law, np.stack([N, D]), y, opt.theta, np.arange(250), B=100, seed=1)
    assert opt.converged and len(boot) >= 95
    for j, p in enumerate(law.params):
        lo, hi = np.percentile(p.to_value(boot[:, j]), [2.5, 97.5])
        assert lo <= truth[p.name] <= hi, (p.name, lo, hi)
    est = {p.name: float(p.to_value(t)) for p, t in zip(law.params, opt.theta)}
    assert est["E"] == pytest.approx(1.69, rel=0.05)
    assert est["alpha"] == pytest.approx(0.34, rel=0.1) and est["beta"] == pytest.approx(0.28, rel=0.1)


def test_recovers_kaplan_parameters_over_params_and_steps():
    law = get_law("kaplan_ns")
    truth = {"N_c": 8.8e13, "alpha_N": 0.076, "S_c": 2.1e3, "alpha_S": 0.76}        # Kaplan et al.'s values
    N = np.repeat([1e6, 3e6, 1e7, 3e7, 1e8], 8)
    S = np.tile(np.logspace(2.5, 5, 8), 5)
    y = law(N, S, **truth) * np.exp(np.random.default_rng(0).normal(0, 0.002, len(N)))
    opt = fit_arrays(law, np.stack([N, S]), y)
    est = {p.name: float(p.to_value(t)) for p, t in zip(law.params, opt.theta)}
    assert opt.converged and not any(opt.on_bound)
    assert est["alpha_N"] == pytest.approx(0.076, rel=0.02) and est["alpha_S"] == pytest.approx(0.76, rel=0.02)
    assert est["S_c"] == pytest.approx(2.1e3, rel=0.05) and est["N_c"] == pytest.approx(8.8e13, rel=0.3)


def test_same_data_same_result_and_json_round_trip(tmp_path):
    t = tidy_table(seed=3, seeds=2)
    a = fit_size_law(t, "power", "eval/iw/laplace", ["params"], holdout=["XL"], opts=FAST, name="demo")
    b = fit_size_law(t, "power", "eval/iw/laplace", ["params"], holdout=["XL"], opts=FAST, name="demo")
    assert a == b and a.data_hash == b.data_hash
    path = a.write(tmp_path / "f" / "x.json")
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]          # no temp file left behind
    back = FitResult.read(path)
    assert back == a
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 1 and doc["formula"] == a.formula
    assert doc["params"][0]["interval"][0] <= doc["params"][0]["value"] <= doc["params"][0]["interval"][1]


# --- real data: the OLMo ladder ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def olmo_fit():
    t = load_table(OLMO)
    ladder = t["multiplier"].isin(["1xC", "2xC", "5xC", "10xC"]) & t["size"].isin(["190M", "370M", "760M", "1B"])
    df = t[ladder | (t["role"] == "target")]
    return fit_size_law(df, "chinchilla", "c4_en", ["params", "tokens"], holdout=["7B", "13B"],
                        opts=FitOptions(bootstrap=100), loso=False, name="olmo")


def test_olmo_ladder_chinchilla_predicts_7b_and_13b(olmo_fit):
    """190M..1B at 1/2/5/10xC -> 7B (4T tokens) and 13B (5T). Measured: -1.89% and -3.66% (the reference
    Approach-3 fit: -1.9% / -3.7%). Bounds asserted: |error| < 3% (7B) and < 5% (13B)."""
    r = olmo_fit
    assert len(r.points) == 16 and r.sizes == ("190M", "370M", "760M", "1B")
    got = {p.label: p for p in r.holdout}
    assert abs(got["7B"].relative_error) < 0.03
    assert abs(got["13B"].relative_error) < 0.05
    assert got["7B"].actual == pytest.approx(2.4829, abs=1e-4)
    assert got["7B"].inside and got["13B"].inside                       # the 95% intervals cover both
    assert any("extrapolating" in w for w in r.warnings)                # 13B is 10x the largest fitted size


def test_olmo_ladder_with_3b_predicts_better():
    """Adding 3B (measured: -0.26% / -1.01%): bounds |error| < 1% (7B) and < 2% (13B)."""
    t = load_table(OLMO)
    ladder = t["multiplier"].isin(["1xC", "2xC", "5xC", "10xC"]) & (t["role"] == "ladder")
    r = fit_size_law(t[ladder | (t["role"] == "target")], "chinchilla", "c4_en", ["params", "tokens"],
                     holdout=["7B", "13B"], opts=FitOptions(bootstrap=0), loso=False)
    got = {p.label: p.relative_error for p in r.holdout}
    assert abs(got["7B"]) < 0.01 and abs(got["13B"]) < 0.02


# --- bootstrap, backtest, warnings -----------------------------------------------------------------------

def test_holdout_backtest_and_leave_one_size_out_on_seeded_runs():
    t = tidy_table(seed=1, seeds=3, noise=0.01)
    r = fit_size_law(t, "power_offset", "eval/iw/laplace", ["params"], holdout=["XL"], opts=FAST)
    assert r.sizes == ("S", "M", "L") and len(r.points) == 9
    (xl,) = r.holdout
    truth = law_value(SIZES["XL"], 600, **TRUTH)
    assert xl.label == "XL" and xl.actual == pytest.approx(truth, rel=0.02)
    assert abs(xl.relative_error) < 0.03 and xl.interval[0] < xl.predicted < xl.interval[1]
    assert [p.label for p in r.leave_one_size_out] == ["S", "M", "L", "XL"]
    # ~8% of resamples of 9 runs miss one of the 3 sizes: those cannot determine 3 parameters
    assert r.bootstrap.unit == "run" and r.bootstrap.succeeded > 0.8 * r.bootstrap.resamples
    for p in r.params:
        assert p.interval[0] <= p.value <= p.interval[1]
    lo, hi = r.band([SIZES["XL"]])
    assert lo[0] < r.predict([SIZES["XL"]])[0] < hi[0]


def test_reliability_warnings_too_few_points_and_parameter_on_bound():
    x = np.array([1e6, 1e7, 1e8])
    r = fit_size_law(points_table(x, [0.50, 0.52, 0.55]), "power", "loss", ["params"], opts=FAST, loso=False)
    assert r.params[1].on_bound                                         # loss grows with size: b hits 0
    assert any("b = 0 is on its bound" in w for w in r.warnings)
    assert any("one degree of freedom" in w for w in r.warnings)
    exact = fit_size_law(points_table(x, [0.5, 0.4, 0.35]), "power_offset", "loss", ["params"], opts=FAST,
                         loso=False)
    assert all(p.interval is None for p in exact.params)
    assert any("no degrees of freedom" in w for w in exact.warnings)


def test_unfinished_runs_are_left_out_and_reported_unless_asked():
    t = tidy_table(seed=2, status={"XL": "RUNNING"})
    r = fit_size_law(t, "power", "eval/iw/laplace", ["params"], holdout=[], opts=FAST, loso=False)
    assert "XL" not in r.sizes
    held = fit_size_law(t, "power", "eval/iw/laplace", ["params"], holdout=["XL"], opts=FAST, loso=False)
    assert not held.holdout and any("XL has no usable run" in w for w in held.warnings)
    assert r.excluded[0]["run_id"] == "demo-XL-600-s0" and "RUNNING" in r.excluded[0]["reason"]
    r2 = fit_size_law(t, "power", "eval/iw/laplace", ["params"], holdout=[], include_unfinished=True, opts=FAST,
                      loso=False)
    assert "XL" in r2.sizes and not r2.excluded


def test_parallel_bootstrap_equals_serial():
    t = tidy_table(seed=4, seeds=3)
    a = fit_size_law(t, "power", "eval/iw/laplace", ["params"], opts=FitOptions(bootstrap=40, workers=1), loso=False)
    b = fit_size_law(t, "power", "eval/iw/laplace", ["params"], opts=FitOptions(bootstrap=40, workers=2), loso=False)
    assert a.bootstrap.samples == b.bootstrap.samples and a.params == b.params


def test_a_new_law_is_one_declaration():
    register(Law(name="test_log_law", inputs=("x",),
                 params=(Param("c", 1e-6, 1e6, (-2.0, 0.0, 2.0), log=True), Param("k", 0.0, 5.0, (0.5, 1.0, 2.0))),
                 fn=lambda x, c, k: c * np.log(x) ** -k,
                 template="y = <c>·ln(x)^-<k>", latex=r"y = <c>\,\ln(x)^{-<k>}"))
    try:
        x = np.array([1e3, 1e4, 1e5, 1e6, 1e7])
        r = fit_size_law(points_table(x, 7.0 * np.log(x) ** -1.3), "test_log_law", "loss", ["params"], opts=FAST,
                         loso=False)
        assert r.values["c"] == pytest.approx(7.0, rel=1e-5) and r.values["k"] == pytest.approx(1.3, rel=1e-5)
        assert r.formula == "y = 7.000·ln(x)^-1.300"
    finally:
        LAWS.pop("test_log_law")


# --- curves and the partial prediction --------------------------------------------------------------------

def test_curve_fit_per_size_with_last_point_backtest():
    t = tidy_table(seed=5, noise=0.002)
    r = fit_curve(t, "power_offset", "eval/iw/laplace", "M", opts=FAST, name="demo")
    assert r.axis == "steps-M" and len(r.points) == 12                   # step 0 is left out
    assert "step <= 0" in r.excluded[0]["reason"] or "<= 0" in r.excluded[0]["reason"]
    (bt,) = r.holdout
    assert bt.label == "M@600" and abs(bt.relative_error) < 0.02
    assert r.bootstrap.unit == "point" and any("optimistic" in w for w in r.warnings)


def test_running_xl_final_loss_prediction_tightens_with_more_of_its_curve():
    full = tidy_table(seed=6, noise=0.003)
    truth = law_value(SIZES["XL"], 600, **TRUTH)
    rows = predict_final_from_partial(full, "XL", "eval/iw/laplace", 600, opts=FitOptions(bootstrap=40))
    assert [r.fraction for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rows[0].points == 0 and rows[-1].points == 12
    widths = [r.interval[1] - r.interval[0] for r in rows]
    assert widths[-1] < widths[0]
    assert abs(rows[-1].predicted - truth) / truth < 0.01
    assert rows[-1].actual == pytest.approx(full["eval/iw/laplace"].iloc[-1 - 0])
    running = full[~((full["size"] == "XL") & (full["step"] > 300))]
    part = predict_final_from_partial(running, "XL", "eval/iw/laplace", 600, opts=FitOptions(bootstrap=20))
    assert [r.fraction for r in part] == [0.0, 0.25, 0.5] and part[-1].actual is None


# --- bad input ---------------------------------------------------------------------------------------------

def test_bad_input_is_a_clear_fit_error():
    t = tidy_table(seed=0)
    bad = t.copy()
    bad.loc[bad.index[-1], "eval/iw/laplace"] = -0.1
    with pytest.raises(FitError, match=r"must be finite and > 0.*run demo-XL-600-s0, step 600"):
        fit_size_law(bad, "power", "eval/iw/laplace", ["params"], opts=FAST)
    with pytest.raises(FitError, match=r"no column 'eval/iw/edm' \(metric\).*--metric"):
        fit_size_law(t, "power", "eval/iw/edm", ["params"], opts=FAST)
    with pytest.raises(FitError, match="single size"):
        fit_size_law(t[t["size"].isin(["S", "XL"])], "power", "eval/iw/laplace", ["params"], holdout=["XL"])
    with pytest.raises(FitError, match="2 points for the 3 parameters of power_offset"):
        fit_size_law(t[t["size"].isin(["S", "M", "XL"])], "power_offset", "eval/iw/laplace", ["params"],
                     holdout=["XL"])
    with pytest.raises(FitError, match="unknown loss"):
        fit_size_law(t, "power", "eval/iw/laplace", ["params"], opts=FitOptions(loss="l1"))


def test_nan_losses_leave_the_run_out_by_name():
    t = tidy_table(seed=0)
    t.loc[t["size"] == "S", "eval/iw/laplace"] = np.nan
    r = fit_size_law(t, "power", "eval/iw/laplace", ["params"], holdout=["XL"], opts=FAST, loso=False)
    assert r.sizes == ("M", "L")
    assert r.excluded[0]["run_id"] == "demo-S-600-s0" and "NaN" in r.excluded[0]["reason"]
    assert any("only 2 distinct values" in w for w in r.warnings)


# --- the command -------------------------------------------------------------------------------------------

def test_cli_fits_every_iw_metric_and_law_from_a_csv(tmp_path, capsys):
    csv = tmp_path / "table.csv"
    tidy_table(seed=8).to_csv(csv, index=False)
    rc = main(["fit", "--table", str(csv), "--name", "demo", "--out", str(tmp_path / "fits"), "--bootstrap", "0"])
    out = capsys.readouterr().out
    files = sorted(p.name for p in (tmp_path / "fits" / "demo").iterdir())
    assert rc == 0
    for metric in ("iw-laplace", "iw-uniform"):
        for law in ("power", "power_offset"):
            assert f"{metric}__{law}__params.json" in files
    assert "iw-laplace__power_offset__steps-XL.json" in files and "iw-uniform__power__steps-XL.json" not in files
    assert "holdout XL: predicted" in out and "error" in out and "y = " in out
    r = FitResult.read(tmp_path / "fits" / "demo" / "iw-laplace__power__params.json")
    assert r.holdout[0].label == "XL" and r.name == "demo"


def test_cli_sweep_reads_its_table_and_predicts_a_running_xl(tmp_path, monkeypatch, capsys):
    sweep = Path(__file__).parents[1] / "sweeps" / "demo.yaml"
    t = tidy_table(seed=9, status={"XL": "RUNNING"})
    t = t[~((t["size"] == "XL") & (t["step"] > 300))]
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    t.to_csv(tmp_path / "runs" / "demo" / "table.csv", index=False)
    monkeypatch.chdir(tmp_path)
    rc = main(["fit", str(sweep), "--bootstrap", "20", "--metric", "eval/iw/laplace", "--law", "power",
               "--no-curves"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "holdout XL: predicted" in out and "left out: demo-XL-600-s0 (status RUNNING" in out
    assert "final loss of XL at step 600" in out
    partial = json.loads((tmp_path / "fits" / "demo" / "iw-laplace__chinchilla__partial-XL.json").read_text())
    assert partial["kind"] == "partial" and [r["fraction"] for r in partial["rows"]] == [0.0, 0.25, 0.5]


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    pd.DataFrame({"n": [1e6, 1e7], "loss": [0.5, 0.4]}).to_csv(csv, index=False)
    assert main(["fit", "--table", str(csv), "--name", "x", "--out", str(tmp_path)]) == 2
    assert "no eval/iw/* column" in capsys.readouterr().err
    assert main(["fit", "--table", str(tmp_path / "missing.csv"), "--name", "x"]) == 2
    assert "not found" in capsys.readouterr().err


def test_the_primary_metric_is_fitted_even_when_it_is_not_an_iw_column(tmp_path):
    """An own trainer's `fit.metric: val/loss` (the primary) is fitted, and first; iw columns still are."""
    t = tidy_table().rename(columns={"eval/iw/uniform": "val/loss"})
    out = fit_table(t, FitPlan(name="own", laws=("power",), primary="val/loss", opts=FAST, curves=False), tmp_path)
    assert [r.metric for _, r in out.results] == ["val/loss", "eval/iw/laplace"] and not out.errors


def test_fit_table_for_a_table_from_elsewhere(tmp_path):
    t = pd.DataFrame({"model": ["a", "b", "c", "d"], "N": [1e7, 3e7, 1e8, 3e8], "val": [3.1, 2.9, 2.7, 2.6]})
    from scaling.fit import Columns
    out = fit_table(t, FitPlan(name="other", laws=("power",), metrics=("val",), x="N", cols=Columns(size="model"),
                               opts=FAST, curves=False), tmp_path)
    ((path, r),) = out.results
    assert path == tmp_path / "other" / "val__power__N.json"
    assert r.holdout[0].label == "d" and r.sizes == ("a", "b", "c") and not out.errors


def test_fits_run_in_parallel_give_the_same_files_and_errors(tmp_path):
    t = tidy_table(seed=5, seeds=2)
    t["eval/iw/empty"] = np.nan
    t.loc[t.index[0], "eval/iw/empty"] = 0.5  # one value: listed as a metric, not fittable
    outs = {}
    for workers in (1, 2):
        plan = FitPlan("p", metrics=("eval/iw/laplace", "eval/iw/empty", "eval/iw/uniform"),
                       opts=FitOptions(bootstrap=30, workers=workers))
        outcome = fit_table(t, plan, tmp_path / f"w{workers}")
        outs[workers] = ([(p.name, r.params, r.bootstrap.samples, [h.predicted for h in r.holdout])
                          for p, r in outcome.results], outcome.errors)
    serial, parallel = outs[1], outs[2]
    assert parallel == serial
    assert len(serial[0]) == 4 + 8 and [e[0] for e in serial[1]] == ["iw-empty__power__params.json",
                                                                     "iw-empty__power_offset__params.json"]


# --- a flat optimum: replicate runs under a Huber loss far below their spread ---------------------------

def replicate_table(spread: float = 0.03) -> pd.DataFrame:
    """Two runs at each of S/M/L, `spread` above and below 0.05 + 20·n^-0.65 (their means are on the law), and an
    XL on the law: power_offset has as many parameters as there are sizes, like the demo's fit."""
    rows = []
    for size, n in {"S": 2e4, "M": 4e4, "L": 1e5, "XL": 2.5e5}.items():
        for seed, f in enumerate((1.0,) if size == "XL" else (1 + spread, 1 - spread)):
            rows.append({"run_id": f"{size}-s{seed}", "size": size, "params": n, "status": "FINISHED", "step": 600,
                         "loss": (0.05 + 20.0 * n ** -0.65) * f})
    return pd.DataFrame(rows)


def test_a_flat_huber_optimum_is_reported_and_least_squares_is_unique():
    t = replicate_table()
    huber = fit_size_law(t, "power_offset", "loss", ["params"], holdout=["XL"], loso=False,
                         opts=FitOptions(bootstrap=0, starts=16))
    flat = [w for w in huber.warnings if w.startswith("the optimum is not unique")]
    assert len(flat) == 1 and "XL anywhere in [" in flat[0] and "fit.loss: squares" in flat[0]
    lo, hi = (float(v) for v in flat[0].split("XL anywhere in [")[1].split("]")[0].split(", "))
    assert hi > lo * 1.005 and lo <= huber.holdout[0].predicted <= hi  # the data do not pick the prediction
    for opts in (FitOptions(bootstrap=0, starts=16, loss="squares"), FitOptions(bootstrap=0, starts=16, delta=0.1)):
        r = fit_size_law(t, "power_offset", "loss", ["params"], holdout=["XL"], loso=False, opts=opts)
        assert not any(w.startswith("the optimum is not unique") for w in r.warnings), opts
        assert abs(r.holdout[0].relative_error) < 1e-3, opts  # through the sizes' means: on the law at XL


def test_the_sweeps_fit_loss_and_delta_are_used_unless_the_command_overrides_them(tmp_path, monkeypatch):
    import yaml

    data = yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "demo.yaml").read_text())
    data["fit"] |= {"loss": "squares", "laws": ["power_offset"]}
    (tmp_path / "flat.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    t = replicate_table().rename(columns={"loss": "eval/iw/laplace"})
    t.to_csv(tmp_path / "runs" / "demo" / "table.csv", index=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "fits" / "demo" / "iw-laplace__power_offset__params.json"
    for argv, loss, delta in ((["flat.yaml"], "squares", 1e-3), (["flat.yaml", "--loss", "huber", "--delta", "0.05"],
                                                                 "huber", 0.05)):
        assert main(["fit", *argv, "--bootstrap", "0", "--no-curves"]) == 0
        saved = json.loads(out.read_text())
        assert (saved["loss"], saved["delta"]) == (loss, delta)
    assert main(["fit", "flat.yaml", "--delta", "0", "--no-curves"]) == 2
    data["fit"]["delta"] = -1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="must be positive") as e:
        load_sweep(tmp_path / "bad.yaml")
    assert e.value.path == "fit.delta"
