"""Report: figures asserted on their axes (scales, labels, lines, legends), pages on their files and
content, partial sweeps, bad input, atomic writes, the CLI, and a real headless Chromium rendering."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scaling.errors import ReportError
from scaling.report import (
    build_report,
    lambda_grid,
    load_fits,
    load_table,
    plot_compute,
    plot_level_gain,
    plot_level_losses,
    plot_loss_vs_params,
    plot_loss_vs_steps,
    plot_weighting_backtest,
)
from scaling.report import data as D
from scaling.report.figures import frontier
from scaling.report.tables import partial_headline, partial_table
from scaling.report.weightings import parse_label, weight
from scaling.spec import WEIGHTINGS, load_sweep
from tests import report_synth as rs

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("loss_vs_params", "loss_vs_steps", "levels", "weightings", "compute")


@pytest.fixture(scope="module")
def spec():
    return load_sweep(rs.DEMO)


@pytest.fixture(scope="module")
def table():
    return rs.demo_table()


@pytest.fixture(scope="module")
def fits(table):
    return rs.demo_fits(table)


@pytest.fixture(scope="module")
def runs(table):
    return D.runs_of(table, "eval/iw/laplace")


@pytest.fixture(scope="module")
def report(tmp_path_factory, table, fits, spec):
    out = tmp_path_factory.mktemp("rep") / "reports" / "demo"
    return build_report(table, fits, out, spec=spec)


def ax() -> Axes:
    return Figure().add_subplot()


def legend_texts(a: Axes) -> list[str]:
    return [t.get_text() for t in a.get_legend().get_texts()]


def labelled_lines(a: Axes) -> list[str]:
    return [line.get_label() for line in a.get_lines() if not line.get_label().startswith("_")]


# --- weightings and the λ grid -------------------------------------------------------------------------

def test_lambda_grid_matches_the_level_columns_of_the_demo(spec):
    ev = spec.evaluation
    grid = lambda_grid(ev.lambda_min, ev.lambda_max, ev.lambda_step)
    assert len(grid) == 81 and grid[0] == -10.0 and grid[-1] == 10.0 and grid[40] == 0.0


def test_weightings_cover_the_spec_and_follow_their_formulas():
    lam = np.arange(-30.0, 30.0, 0.01)
    for name in WEIGHTINGS:
        assert np.all(weight(name, lam) >= 0)
    for density in ("laplace", "logit_normal", "cosine", "uniform"):  # proper densities over λ integrate to 1
        assert abs(np.sum(weight(density, lam)) * 0.01 - 1.0) < 2e-3, density
    assert weight("laplace", np.array([0.0]))[0] == pytest.approx(1.0)  # 1/(2b), b = 0.5
    assert weight("min_snr", np.array([-5.0, np.log(5.0), 5.0])) == pytest.approx([1.0, 1.0, 5 * np.exp(-5)])
    # EDM: ln σ = −λ/2 ~ N(−1.2, 1.2²): the density peaks at λ = 2.4 before the (e^−λ + σ_d²)/σ_d² factor
    lam2 = np.linspace(-10, 10, 2001)
    density = weight("edm", lam2) / ((np.exp(-lam2) + 0.25) / 0.25)
    assert lam2[np.argmax(density)] == pytest.approx(2.4, abs=0.01)


def test_weighting_labels_with_parameters_parse_and_bad_ones_are_named():
    assert parse_label("laplace") == ("laplace", {"mu": 0.0, "b": 0.5})
    assert parse_label("laplace_b1") == ("laplace", {"mu": 0.0, "b": 1.0})
    assert parse_label("min_snr_gamma2") == ("min_snr", {"gamma": 2.0})
    with pytest.raises(ReportError, match="unknown weighting 'karras'"):
        parse_label("karras")
    with pytest.raises(ReportError, match="'zz3'"):
        parse_label("laplace_zz3")


# --- figures -------------------------------------------------------------------------------------------

def test_loss_vs_params_draws_points_law_extrapolation_band_and_holdout(runs, fits):
    power = next(f for f in fits if f.metric == "eval/iw/laplace" and f.law == "power" and f.axis == "params")
    a = ax()
    assert plot_loss_vs_params(runs, [power], metric="eval/iw/laplace", ax=a) is a
    assert a.get_xscale() == "log" and a.get_yscale() == "log"
    assert "parameters" in a.get_xlabel() and "L_iw" in a.get_ylabel() and "laplace" in a.get_ylabel()
    assert a.get_title().startswith("Loss vs parameters")
    texts = legend_texts(a)
    assert texts[:4] == ["S", "M", "L", "XL"]
    assert f"power: {power.formula}" in texts and re.fullmatch(r"y = \d\.\d{3}·x\^-0\.\d{3}", power.formula)
    h = power.holdout[0]
    assert any(t.startswith("power predicts XL: ") and f"{h.predicted:.4g}" in t for t in texts)
    assert f"XL actual: {h.actual:.4g}" in texts and "power 95% bootstrap band" in texts
    assert labelled_lines(a) == ["S", "M", "L", "XL", f"power: {power.formula}", "power extrapolated",
                                 f"XL actual: {h.actual:.4g}"]  # + the prediction's errorbar container
    assert len(a.containers) == 1 and len(a.collections) >= 1  # the interval whiskers and the band
    # the law is evaluated from the fit's parameters over exactly the fitted sizes, never refitted
    law = next(line for line in a.get_lines() if line.get_label() == f"power: {power.formula}")
    xs = [p.x["params"] for p in power.points]
    assert law.get_xdata()[0] == pytest.approx(min(xs)) and law.get_xdata()[-1] == pytest.approx(max(xs))
    assert law.get_ydata() == pytest.approx(power.predict(law.get_xdata()))
    assert any(f"{h.relative_error:+.1%}" in t.get_text() for t in a.texts)


def test_reference_formula_appears_in_the_legend(runs):
    pts = [(r.run_id, r.size, r.params, r.final) for r in runs if r.size != "XL"]
    fit = rs.make_fit("eval/iw/laplace", "power", "params", "params", pts, {"a": 0.369, "b": 0.030})
    a = plot_loss_vs_params(runs, [fit], metric="eval/iw/laplace", ax=ax())
    assert "power: y = 0.369·x^-0.030" in legend_texts(a)
    steps = rs.make_fit("eval/iw/laplace", "power_offset", "steps-S", "step",
                        [("demo-S-600steps-s0", "S", 10.0, 0.7), ("demo-S-600steps-s0", "S", 600.0, 0.66)],
                        {"E": 0.303, "a": 1.4e5, "b": 0.140})
    assert steps.formula == "y = 0.303 + 1.4e5·x^-0.140"


def test_loss_vs_steps_draws_each_size_its_fit_and_the_heldout_prediction(table, runs, fits):
    curve_fits = [f for f in fits if f.axis.startswith("steps-")]
    a = plot_loss_vs_steps(D.curves(table, "eval/iw/laplace", "step"), runs, curve_fits,
                           metric="eval/iw/laplace", heldout=("XL",), ax=ax())
    assert a.get_xscale() == "log" and a.get_yscale() == "log"
    assert a.get_xlabel() == "training steps" and "L_iw" in a.get_ylabel()
    texts = legend_texts(a)
    by_size = {f.axis[len("steps-"):]: f for f in curve_fits}
    for size in ("S", "M", "L"):
        assert f"{size} fit: {by_size[size].formula}" in texts
    assert f"XL curve fit (step ≤ 300): {by_size['XL'].formula}" in texts and "XL extrapolated" in texts
    assert any(t.startswith("power_offset predicts XL@600") for t in texts)
    data = [line for line in a.get_lines() if line.get_label() in ("S", "M", "L", "XL")]
    assert len(data) == 4 and all(len(line.get_xdata()) == 60 for line in data)
    # over samples: the curve fits (made over steps) are not drawn on an axis they were not fitted on
    b = plot_loss_vs_steps(D.curves(table, "eval/iw/laplace", "samples"), runs, curve_fits,
                           metric="eval/iw/laplace", x="samples", heldout=("XL",), ax=ax())
    assert legend_texts(b) == ["S", "M", "L", "XL"] and b.get_xlabel() == "samples seen (images)"
    assert "no curve fits" in b.get_title()


def test_level_losses_with_weightings_on_a_second_axis_and_the_gain(table, runs, spec):
    ev = spec.evaluation
    grid = lambda_grid(ev.lambda_min, ev.lambda_max, ev.lambda_step)
    levels = D.final_levels(table, runs)
    a = plot_level_losses(levels, grid, rs.WEIGHTINGS, ax=ax())
    assert a.get_yscale() == "log" and a.get_xscale() == "linear" and "λ" in a.get_xlabel()
    assert [line.get_label() for line in a.get_lines()] == [f"ℓ(λ) {s}" for s in ("S", "M", "L", "XL")]
    assert list(a.get_lines()[0].get_xdata()) == list(grid)
    twin = [o for o in a.figure.axes if o is not a][0]
    assert [line.get_label() for line in twin.get_lines()] == [f"w(λ) {w}" for w in rs.WEIGHTINGS]
    assert max(max(line.get_ydata()) for line in twin.get_lines()) == pytest.approx(1.0)
    assert legend_texts(a)[-1] == "w(λ) logit_normal" and "weighting" in twin.get_ylabel()
    g = plot_level_gain(levels, grid, ax=ax())
    assert labelled_lines(g) == ["M vs S", "L vs S", "XL vs S"] and "gain over S" in g.get_ylabel()
    xl = g.get_lines()[2].get_ydata()
    assert 0.0 <= grid[np.argmax(xl)] <= 2.0 and max(xl) > max(g.get_lines()[0].get_ydata()) > 0
    assert plot_level_losses(levels, None, rs.WEIGHTINGS, ax=ax()).get_xlabel().startswith("level index")


def test_weighting_backtest_bars_sorted_by_error(fits):
    a = plot_weighting_backtest(fits, ax=ax())
    assert len(a.patches) == 6  # 5 weightings with power + laplace with power_offset
    ticks = [t.get_text() for t in a.get_yticklabels()]
    assert sorted(ticks) == sorted(rs.WEIGHTINGS)
    best = {f.metric[len("eval/iw/"):]: min(abs(h.relative_error) for g in fits if g.metric == f.metric
                                           and g.axis == "params" for h in g.holdout) for f in fits}
    assert ticks == sorted(best, key=best.get) and a.yaxis_inverted()
    assert legend_texts(a) == ["power", "power_offset"] and "relative error" in a.get_xlabel()
    assert plot_weighting_backtest([], ax=ax()).texts[0].get_text().startswith("no backtest")


def test_compute_view_and_its_frontier(table, runs):
    a = plot_compute(D.curves(table, "eval/iw/laplace", "flops"), runs, metric="eval/iw/laplace", ax=ax())
    assert a.get_xscale() == "log" and "FLOPs" in a.get_xlabel()
    assert legend_texts(a) == ["S", "M", "L", "XL", "compute frontier (lowest loss so far)"]
    front = a.get_lines()[-1]
    assert np.all(np.diff(front.get_xdata()) > 0) and np.all(np.diff(front.get_ydata()) < 0)
    pts = pd.DataFrame({"c": [1, 2, 2, 3, 4, 5], "y": [5.0, 6.0, 4.0, 4.5, 3.0, 3.0]})
    assert frontier(pts, "c", "y").values.tolist() == [[1, 5.0], [2, 4.0], [4, 3.0]]


def test_every_plot_makes_its_own_axes_when_none_is_given(table, runs, fits):
    for a in (plot_loss_vs_params(runs, fits, metric="eval/iw/laplace"), plot_weighting_backtest(fits),
              plot_compute(D.curves(table, "eval/iw/laplace", "flops"), runs, metric="eval/iw/laplace")):
        assert isinstance(a, Axes) and a.get_title()


# --- the page --------------------------------------------------------------------------------------------

def test_report_writes_self_contained_html_markdown_and_figures(report, spec, table):
    out = report.out
    assert report.figures == FIGURES and report.status == () and report.problems == ()
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ET.parse(out / "figures" / f"{name}.svg").getroot().tag.endswith("svg")
    page = (out / "index.html").read_text(encoding="utf-8")
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == (out / "figures" / "loss_vs_params.png").read_bytes()
    assert not re.search(r"<(script|link|iframe)\b", page) and "url(" not in page  # nothing fetched
    for text in (spec.sha256, "sqlite:///./mlflow.db", "git commit", "Every run in the table finished",
                 "demo-XL-600steps-s0", "y = ", "leave-one-size-out", "Backtest", "Fitted parameters", "Fit warnings"):
        assert text in page, text
    md = (out / "report.md").read_text(encoding="utf-8")
    for ref in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (out / ref).is_file()
    assert spec.sha256 in md and "| demo-L-600steps-s0 | L |" in md
    assert not list(out.parent.glob(".demo.*"))  # no temp folders left behind


@pytest.mark.parametrize("case", ["failed", "missing"])  # "running": with the real fit below
def test_partial_sweep_is_stated_plainly(tmp_path, spec, case):
    if case == "missing":
        table = rs.demo_table(sizes=("S", "M", "L"), with_levels=False)
    else:
        table = rs.demo_table({"XL": 300}, {"XL": "FAILED"}, with_levels=False)
    fits = rs.demo_fits(table, metrics=("laplace",))
    if case == "failed":
        fits[0] = dataclasses.replace(fits[0], excluded=({"run_id": "demo-XL-600steps-s0", "reason": "status FAILED"},))
    result = build_report(table, fits, tmp_path / "r", spec=spec)
    expected = {"failed": "XL (demo-XL-600steps-s0) (the held-out size) is failed at step 300 of 600",
                "missing": "XL has no evaluated run in the table"}[case]
    assert result.status[0].startswith(expected) and len(result.status) == (2 if case == "failed" else 1)
    page = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    assert "Sweep status: partial" in page and expected in page
    assert result.figures == FIGURES
    if case == "failed":
        assert "not observed yet" in page  # the backtest has no final XL value to compare with
        assert result.status[1] == "demo-XL-600steps-s0 was left out of the fits: status FAILED."


def test_report_without_fits_or_levels_still_draws_the_data(tmp_path, table):
    small = table.drop(columns=D.level_columns(table))
    fits, partials, problems = load_fits([tmp_path / "fits" / "demo"])
    assert fits == [] and partials == [] and "run `scaling fit` first" in problems[0]
    result = build_report(small, fits, tmp_path / "r", problems=problems)
    assert result.figures == FIGURES
    page = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    assert "No fit results" in page and "run `scaling fit` first" in page


def test_unreadable_fit_file_is_reported_and_the_rest_used(tmp_path, fits):
    folder = rs.write_fits(fits[:2], tmp_path / "fits")
    (folder / "broken.json").write_text("{not json")
    (folder / "old.json").write_text(json.dumps({"schema_version": 0}))
    loaded, _, problems = load_fits([folder])
    assert [f.law for f in loaded] == [f.law for f in fits[:2]]
    assert len(problems) == 2 and all("skipped" in p for p in problems)


def test_a_running_size_predicted_from_its_partial_curve_is_read_and_drawn(tmp_path):
    from scaling.fit.partial import PartialPrediction, write_partial

    table = rs.demo_table({"XL": 300}, {"XL": "RUNNING"}, with_levels=False)
    fits = rs.demo_fits(table, metrics=("laplace",))
    rows = (PartialPrediction(0.0, 0.0, 0, 0.39, (0.36, 0.42)), PartialPrediction(0.5, 300.0, 30, 0.376, (0.37, 0.382)))
    folder = rs.write_fits(fits, tmp_path / "fits")
    write_partial(folder / "iw-laplace__chinchilla__partial-XL.json", rows, metric="eval/iw/laplace",
                  law="chinchilla", size="XL", final_step=600.0)
    loaded, partials, problems = load_fits([folder])
    assert len(loaded) == len(fits) and problems == [] and partials[0].rows == rows
    assert partial_headline(partials, "eval/iw/laplace") == [
        "chinchilla predicts XL's final loss at step 600 from the other sizes and 50% of its curve (up to step "
        "300): 0.376 [0.37, 0.382]."]
    assert [r[3] for r in partial_table(partials).rows] == ["0%", "50%"]
    curve_fits = [f for f in loaded if f.axis.startswith("steps-")]
    a = plot_loss_vs_steps(D.curves(table, "eval/iw/laplace", "step"), D.runs_of(table, "eval/iw/laplace"),
                           curve_fits, metric="eval/iw/laplace", heldout=("XL",), partials=partials, ax=ax())
    assert "chinchilla predicts XL@600 from 50% of its curve: 0.376 [0.37, 0.382]" in legend_texts(a)
    bar = a.containers[-1]
    assert bar.lines[0].get_xdata()[0] == 600.0 and bar.lines[0].get_ydata()[0] == pytest.approx(0.376)


def test_report_reads_what_scaling_fit_writes(tmp_path, spec, monkeypatch):
    """The contract between `fit` and `report`, end to end: the real `scaling fit` on a partial sweep."""
    from scaling.cli import main

    table = rs.demo_table({"XL": 300}, {"XL": "RUNNING"}, with_levels=False)
    table.to_csv(tmp_path / "table.csv", index=False)
    monkeypatch.chdir(tmp_path)
    assert main(["fit", str(rs.DEMO), "--table", "table.csv", "--law", "power", "--bootstrap", "30",
                 "--workers", "1", "--metric", "eval/iw/laplace,eval/iw/uniform"]) == 0
    fits, partials, problems = load_fits(["fits/demo"])
    assert problems == [] and partials and {f.axis for f in fits} == {"params", "steps-S", "steps-M", "steps-L",
                                                                       "steps-XL"}
    result = build_report(table, fits, tmp_path / "reports" / "demo", spec=spec, partials=partials)
    assert result.figures == FIGURES and result.problems == ()
    assert any("left out of the fits: status RUNNING" in line for line in result.status)
    page = (result.out / "report.md").read_text(encoding="utf-8")
    size_law = next(f for f in fits if f.axis == "params" and f.metric == "eval/iw/laplace")
    assert f"power ({size_law.formula}) predicts XL: " in page and "not observed yet" in page
    assert "chinchilla predicts XL's final loss at step 600 from the other sizes and 50% of its curve" in page
    assert "Final loss of a running size from its partial curve" in page and "not reached" in page
    status = "XL (demo-XL-600steps-s0) (the held-out size) is running, step 300 of 600: its points are partial"
    assert result.status[0].startswith(status) and "## Sweep status: partial" in page


def test_bad_tables_raise_errors_that_name_the_fix(tmp_path, table):
    with pytest.raises(ReportError, match="scaling export"):
        load_table(tmp_path / "absent.csv")
    with pytest.raises(ReportError, match="no rows"):
        build_report(table.iloc[:0], [], tmp_path / "r", metric="eval/iw/laplace")
    with pytest.raises(ReportError, match="eval/iw/karras.*--metric"):
        build_report(table, [], tmp_path / "r", metric="eval/iw/karras")
    with pytest.raises(ReportError, match="lacks column.*step"):
        build_report(table.drop(columns=["step"]), [], tmp_path / "r")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ReportError, match="not a readable CSV"):
        load_table(bad)
    assert not (tmp_path / "r").exists()


def test_a_failed_build_keeps_the_previous_report(tmp_path, table, fits, monkeypatch):
    small = table.drop(columns=D.level_columns(table))
    out = tmp_path / "r"
    build_report(small, fits[:1], out)
    before = (out / "index.html").read_bytes()
    import scaling.report.build as B

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(B, "_render", broken)  # the disk fills up while the new report is being written
    with pytest.raises(OSError, match="disk full"):
        build_report(small, fits[1:2], out)
    assert (out / "index.html").read_bytes() == before and (out / "report.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_foreign_table_columns_and_mlflow_links(tmp_path, table):
    from scaling.report import report_from_files

    foreign = table.drop(columns=["run_id", *D.level_columns(table)]).rename(
        columns={"size": "model", "params": "n_params", "step": "iteration"})
    foreign["experiment_id"], foreign["mlflow_run_id"] = "7", "abc" + foreign["model"]
    foreign.to_csv(tmp_path / "t.csv", index=False)
    result = report_from_files(table=tmp_path / "t.csv", out=tmp_path / "r", size_col="model",
                               params_col="n_params", step_col="iteration", mlflow_uri="http://127.0.0.1:5000")
    page = (result.out / "index.html").read_text(encoding="utf-8")
    assert result.figures == FIGURES and "no fit results" not in " ".join(result.problems)
    assert '<a href="http://127.0.0.1:5000/#/experiments/7/runs/abcXL">abcXL</a>' in page
    with pytest.raises(ReportError, match="column.*nope.*not in the table"):
        report_from_files(table=tmp_path / "t.csv", out=tmp_path / "r", size_col="nope")


def test_tables_from_elsewhere_real_results_without_size_run_or_complete_step_columns(tmp_path):
    """Published results (tests/data): sizes named from params as `scaling fit` names them; a --step-col
    replaces a `step` column; rows without a step are a clean error naming --step-col."""
    from scaling.fit.table import Columns, normalized
    from scaling.report import report_from_files

    data = Path(__file__).parent / "data"
    openlm = data / "openlm-overtraining" / "c4_original.csv"  # name, params, tokens, loss_c4_val: no size, step
    result = report_from_files(table=openlm, out=tmp_path / "openlm", metric="loss_c4_val", step_col="tokens")
    fit_sizes = set(normalized(pd.read_csv(openlm), Columns(run="name"))["_size"])
    assert fit_sizes == {"1.057e+07", "7.891e+07", "1.537e+08", "4.116e+08", "1.44e+09", "6.889e+09"}
    runs_table = (result.out / "report.md").read_text(encoding="utf-8").split("## Runs", 1)[1]
    assert all(f"| {size} | {size} |" in runs_table for size in fit_sizes)  # run id and size: one run per size
    olmo = data / "olmo-ladder" / "final_checkpoints.csv"  # its 7B row has no step
    with pytest.raises(ReportError, match=r"step has rows without a number \(runs 7B-4T-anneal\).*--step-col"):
        report_from_files(table=olmo, out=tmp_path / "olmo", metric="c4_en")
    result = report_from_files(table=olmo, out=tmp_path / "olmo", metric="c4_en", step_col="tokens")
    assert "| 7B-4T-anneal | 7B |" in (result.out / "report.md").read_text(encoding="utf-8")


def test_a_law_fitted_over_a_renamed_params_column_is_drawn(tmp_path):
    """`scaling fit --params-col n_params` fits over `n_params`; the report (`--params-col n_params`) draws
    that law over its `params` axis, with the held-out prediction (OpenLM's compute-optimal C4 runs)."""
    from scaling.fit import Columns, FitOptions, FitPlan, fit_table

    t = pd.read_csv(Path(__file__).parent / "data" / "openlm-overtraining" / "c4_original.csv")
    t = t[t["chinchilla_multiplier"] == 1.0].rename(columns={"params": "n_params", "loss_c4_val": "loss"})
    t = t.assign(model=t["n_params"].map(lambda n: f"{n / 1e6:.0f}M"))[["model", "n_params", "tokens", "loss"]]
    out = fit_table(t, FitPlan(name="co", laws=("power_offset",), metrics=("loss",), curves=False,
                               cols=Columns(size="model", params="n_params"), opts=FitOptions(bootstrap=50)), tmp_path)
    ((_, fit),) = out.results
    assert fit.columns == {"x": "n_params"} and fit.holdout[0].label == "6889M"
    table = D.rename_columns(t, "model", "n_params", "tokens")
    (renamed,) = D.rename_fit_columns([fit], "model", "n_params", "tokens")
    assert renamed.columns == {"x": "params"} and set(renamed.points[0].x) == {"params"}
    a = plot_loss_vs_params(D.runs_of(table, "loss"), [renamed], metric="loss", ax=ax())
    texts = legend_texts(a)
    assert f"power_offset: {fit.formula}" in texts and any(x.startswith("power_offset predicts 6889M") for x in texts)
    assert "no fit found" not in a.get_title()


def test_cli_report_in_a_process_that_never_imports_torch_submitit_or_mlflow(tmp_path, table, fits):
    table.drop(columns=D.level_columns(table)).to_csv(tmp_path / "table.csv", index=False)  # small: fast
    rs.write_fits(fits[:3], tmp_path / "fits" / "demo")
    code = (
        "import sys\n"
        "from scaling.cli import main\n"
        f"rc = main(['report', {str(ROOT / 'sweeps' / 'demo.yaml')!r}, '--table', 'table.csv', "
        "'--fits', 'fits/demo', '--out', 'reports/demo'])\n"
        "bad = sorted(m for m in ('torch', 'submitit', 'mlflow', 'ray') if m in sys.modules)\n"
        "print('RC', rc, 'IMPORTED', bad)\n"
        "rc2 = main(['report'])\n"
        "print('RC2', rc2)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert "RC 0 IMPORTED []" in proc.stdout, proc.stdout + proc.stderr
    assert "report: reports/demo/index.html (5 figures" in proc.stdout
    assert "RC2 1" in proc.stdout and "give a sweep file" in proc.stderr
    assert (tmp_path / "reports" / "demo" / "figures" / "levels.svg").is_file()


# --- a real browser ---------------------------------------------------------------------------------------

CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.setAttribute('data-check', JSON.stringify({
    images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    widths: imgs.map(i => i.naturalWidth), tables: document.querySelectorAll('table').length}));
});
</script>
</body>"""


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)")
def test_index_html_renders_in_headless_chromium_with_every_image_and_no_console_error(report, tmp_path):
    page = (report.out / "index.html").read_text(encoding="utf-8")
    check = tmp_path / "index.html"  # the page, with a script that writes what loaded into the DOM
    check.write_text(page.replace("</body>", CHECK), encoding="utf-8")
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--dump-dom", check.as_uri()],
        capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'data-check="([^"]*)"', proc.stdout)
    assert found, proc.stdout[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["images"] == 5 and result["loaded"] == 5 and min(result["widths"]) > 500
    assert result["tables"] == 4  # runs, parameters, backtest, fit warnings
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert console == []


def test_target_verdict_follows_each_backtest(fits):
    """fit.target_error: one line per size law and held-out size, met only when the error is within the
    target and the actual lies inside the interval; the line states the error and where the actual fell."""
    from scaling.report.style import pct
    from scaling.report.tables import target_lines

    assert target_lines(fits, "eval/iw/laplace", None) == []
    laws = [f for f in fits if f.metric == "eval/iw/laplace" and D.curve_size(f) is None and f.holdout]
    assert laws
    for target in (1e-6, 0.5):
        lines = target_lines(fits, "eval/iw/laplace", target)
        assert len(lines) == sum(len(f.holdout) for f in laws)
        for f, line in zip(laws, lines):
            h = f.holdout[0]
            met = abs(h.relative_error) <= target and h.inside is True
            assert line.startswith(f"Target ({f.law}, {h.label} within ±{target:.1%}")
            assert (": met (" in line) == met and (": NOT met (" in line) == (not met)
            verdict = line.split("): ", 1)[1]
            assert verdict.startswith(f"{'met' if met else 'NOT met'} (error {pct(h.relative_error)} is ")
            assert ("actual inside the interval" in verdict) == (h.inside is True)
    import dataclasses

    good = dataclasses.replace(laws[0], holdout=(dataclasses.replace(laws[0].holdout[0], relative_error=-0.015,
                                                                     inside=True),))
    assert target_lines([good], "eval/iw/laplace", 0.02) == [
        f"Target ({good.law}, XL within ±2.0% and inside the interval): met (error -1.5% is within ±2.0%; "
        "actual inside the interval)."]
