"""`scaling tune` without Ray: search syntax, spec overrides, the overlay, the result table and figure, μP."""

from __future__ import annotations

import csv
import math

import pytest
import yaml

from scaling.cli import build_parser
from scaling.errors import LaunchError, SpecError
from scaling.plan import lr_for, plan
from scaling.spec import load_sweep, parse_sweep
from scaling.tune import (
    SearchParam,
    Trial,
    best_trial,
    check_space,
    parse_search,
    plot_tune,
    with_steps,
    with_values,
    write_overlay,
    write_table,
)
from tests.conftest import tiny_sweep_dict


@pytest.mark.parametrize("text, path, kind, values", [
    ("lr=log(1e-4,3e-3)", ("model", "sizes", "S", "lr"), "log", (1e-4, 3e-3)),
    ("warmup=int(0, 200)", ("train", "schedule", "warmup_steps"), "int", (0, 200)),
    ("weight_decay=choice(0,0.01,0.1)", ("train", "optimizer", "weight_decay"), "choice", (0, 0.01, 0.1)),
    ("train.schedule.name=grid(cosine,linear)", ("train", "schedule", "name"), "grid", ("cosine", "linear")),
    (" batch_size = logint(8,64) ", ("train", "batch_size"), "logint", (8, 64)),
])
def test_parse_search(text, path, kind, values):
    p = parse_search(text, "S")
    assert (p.path, p.kind, p.values) == (path, kind, values)


@pytest.mark.parametrize("text, message", [
    ("lr", r"expected NAME=KIND\(VALUES\).*kinds: log\(...\)"),
    ("lr=normal(0,1)", "unknown kind 'normal'"),
    ("lr=log(1e-3,1e-4)", "low < high"),
    ("lr=log(0,1e-3)", "positive bounds"),
    ("warmup=int(0.5,10)", "whole-number bounds"),
    ("lr=choice(1e-3)", "at least two different values"),
])
def test_parse_search_errors_name_the_valid_forms(text, message):
    with pytest.raises(SpecError, match=message):
        parse_search(text, "S")


@pytest.fixture
def sweep(tmp_path):
    data = tiny_sweep_dict()
    data["launch"] = {"workdir": str(tmp_path / "runs")}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_check_space_rejects_bad_keys_and_values(sweep):
    check_space(sweep, [parse_search("lr=log(1e-4,1e-2)", "S"), parse_search("warmup=int(0,5)", "S")])
    with pytest.raises(SpecError, match=r"--search train.optimizer.lrr: .*unknown key 'lrr'; valid keys: lr"):
        check_space(sweep, [parse_search("train.optimizer.lrr=log(1e-4,1e-2)", "S")])
    with pytest.raises(SpecError, match="warmup: .*expected an integer"):
        check_space(sweep, [parse_search("warmup=choice(1,x)", "S")])
    with pytest.raises(SpecError, match="searched twice"):
        check_space(sweep, [parse_search("lr=log(1e-4,1e-2)", "S")] * 2)


def test_with_values_sets_typed_values_and_the_plan_follows(sweep):
    spec = load_sweep(sweep)
    lr, warm = parse_search("lr=log(1e-4,1e-2)", "M"), parse_search("warmup=int(0,9)", "M")
    tuned = with_values(spec, {lr.path: 4e-3, warm.path: 3})
    assert tuned.model.sizes["M"].lr == 4e-3 and tuned.model.sizes["S"].lr is None
    assert tuned.train.schedule.warmup_steps == 3 and isinstance(tuned.train.schedule.warmup_steps, int)
    assert {j.size: j.lr for j in plan(tuned)} == {"S": 1e-3, "M": 4e-3, "L": 1e-3}
    short = with_steps(tuned, 4, 2)
    assert [j.steps for j in plan(short)] == [4, 4, 4] and short.train.eval_every == 2
    with pytest.raises(SpecError, match="expected an integer"):
        with_values(spec, {warm.path: "three"})


def test_overlay_sets_the_size_lr_and_is_included_by_the_sweep(sweep):
    spec = load_sweep(sweep)
    lr, warm = parse_search("lr=log(1e-4,1e-2)", "S"), parse_search("warmup=int(0,9)", "S")
    path = write_overlay(sweep, spec, "S", {lr.path: 2.5e-3, warm.path: 4}, "best of 3")
    assert path == sweep.with_name("tiny.tuned.yaml")
    assert yaml.safe_load(path.read_text()) == {"model": {"sizes": {"S": {"lr": 2.5e-3}}},
                                                "train": {"schedule": {"warmup_steps": 4}}}
    assert "include: [tiny.tuned.yaml]" in path.read_text()
    # tuning another size merges into the same overlay
    write_overlay(sweep, spec, "M", {parse_search("lr=log(1e-4,1e-2)", "M").path: 1.5e-3}, "best of 2")
    data = yaml.safe_load(sweep.read_text()) | {"include": ["tiny.tuned.yaml"]}
    sweep.write_text(yaml.safe_dump(data))
    jobs = {j.size: j for j in plan(load_sweep(sweep))}
    assert (jobs["S"].lr, jobs["M"].lr, jobs["L"].lr) == (2.5e-3, 1.5e-3, 1e-3)
    assert load_sweep(sweep).train.schedule.warmup_steps == 4


def test_overlay_under_mup_transfers_the_lr_to_every_width(sweep):
    data = yaml.safe_load(sweep.read_text())
    data["train"]["optimizer"] = {"lr": 1e-3, "lr_scale": "mup"}
    data["include"] = ["tiny.tuned.yaml"]
    sweep.write_text(yaml.safe_dump(data))
    (sweep.parent / "tiny.tuned.yaml").write_text("model: {sizes: {M: {lr: 0.5}}}\n")  # an earlier per-size tune
    spec = load_sweep(sweep)
    write_overlay(sweep, spec, "M", {("model", "sizes", "M", "lr"): 3e-3}, "best of 4")
    assert yaml.safe_load((sweep.parent / "tiny.tuned.yaml").read_text()) == {
        "train": {"optimizer": {"lr": 3e-3, "base_width": 24}}}
    widths = {name: s.width for name, s in spec.model.sizes.items()}
    jobs = {j.size: j.lr for j in plan(load_sweep(sweep))}
    assert jobs == pytest.approx({name: 3e-3 * 24 / w for name, w in widths.items()})
    assert jobs["M"] == pytest.approx(3e-3)


def test_mup_rule_is_applied_per_size_in_the_plan():
    data = tiny_sweep_dict()
    data["train"]["optimizer"] = {"lr": 2e-3, "lr_scale": "mup", "base_width": 16}
    spec = parse_sweep(data)
    got = {j.size: j.lr for j in plan(spec)}
    assert got == pytest.approx({"S": 2e-3, "M": 2e-3 * 16 / 24, "L": 2e-3 * 16 / 32})
    data["train"]["optimizer"].pop("base_width")  # default: the first size's width (16)
    assert {j.size: j.lr for j in plan(parse_sweep(data))} == pytest.approx(got)
    data["model"]["sizes"]["L"]["lr"] = 7e-4  # a size's own lr wins over the rule
    assert lr_for(parse_sweep(data), "L") == 7e-4
    data["train"]["optimizer"]["lr_scale"] = "none"
    assert {j.size: j.lr for j in plan(parse_sweep(data))} == {"S": 2e-3, "M": 2e-3, "L": 7e-4}


def _trials():
    return [Trial("t0", "r0", "FINISHED", 40, 0.5, {"lr": 1e-2}),
            Trial("t1", "r1", "STOPPED", 5, 0.4, {"lr": 3e-4}),  # lower, but stopped early
            Trial("t2", "r2", "FINISHED", 40, 0.3, {"lr": 3e-3}),
            Trial("t3", "r3", "FAILED", None, None, {"lr": 5e-2}, "RuntimeError: boom")]


def test_best_trial_prefers_finished_trials():
    assert best_trial(_trials()).trial == "t2"
    assert best_trial(_trials()[:2]).trial == "t0"
    assert best_trial([_trials()[1]]).trial == "t1"
    with pytest.raises(LaunchError, match="no trial reported an L_iw .*boom"):
        best_trial([_trials()[3]])


def test_table_and_figure(tmp_path):
    params = [SearchParam("lr", ("model", "sizes", "S", "lr"), "log", (1e-4, 1e-1))]
    path = write_table(_trials(), params, "eval/iw/laplace", tmp_path / "t" / "results.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["trial"] for r in rows] == ["t2", "t1", "t0", "t3"]  # by L_iw, failed last
    assert rows[0] == {"trial": "t2", "run_id": "r2", "status": "FINISHED", "step": "40", "lr": "0.003",
                       "eval/iw/laplace": "0.3", "error": ""}
    assert rows[3]["error"] == "RuntimeError: boom" and rows[3]["eval/iw/laplace"] == ""
    fig = plot_tune(_trials(), params, "eval/iw/laplace", "tiny S")
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "lr"
    points = {tuple(map(tuple, c.get_offsets())) for c in ax.collections}
    assert ((1e-2, 0.5), (3e-3, 0.3)) in points and ((3e-4, 0.4),) in points and ((3e-3, 0.3),) in points
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["finished", "stopped early", "best lr=0.003"]


def test_figure_of_a_choice_parameter_has_one_tick_per_value():
    params = [SearchParam("name", ("train", "schedule", "name"), "choice", ("cosine", "linear"))]
    trials = [Trial("a", "a", "FINISHED", 4, 1.0, {"name": "linear"}),
              Trial("b", "b", "FINISHED", 4, 2.0, {"name": "cosine"})]
    (ax,) = plot_tune(trials, params, "L").axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cosine", "linear"]
    assert tuple(map(tuple, ax.collections[0].get_offsets())) == ((1.0, 1.0), (0.0, 2.0))


def test_cli_tune_options():
    args = build_parser().parse_args(["tune", "s.yaml", "--size", "S", "--search", "lr=log(1e-4,3e-3)",
                                      "--search", "warmup=int(0,200)", "--samples", "16"])
    assert (args.size, args.search, args.samples, args.reduction) == ("S", ["lr=log(1e-4,3e-3)", "warmup=int(0,200)"],
                                                                      16, 3)
    assert math.isclose(parse_search(args.search[0], args.size).values[1], 3e-3)


def test_last_result_of_a_trial_is_read_from_its_file(tmp_path):
    from scaling.launch.ray_tune import _last_result

    (tmp_path / "result.json").write_text('{"step": 5}\n{"step": 10}\n')
    assert _last_result(tmp_path) == {"step": 10}
    assert _last_result(tmp_path / "missing") is None


def test_mup_rule_reaches_each_size_optimizer(tmp_path):
    """The built-in trainer's AdamW runs each size at lr·base_width/width (constant schedule, 3 steps)."""
    import torch

    from scaling.train import JobRunner

    data = tiny_sweep_dict()
    data["train"].update(budget=3, eval_every=3, ckpt_every=3,
                         optimizer={"lr": 2e-3, "lr_scale": "mup", "base_width": 16})
    data["launch"] = {"workdir": str(tmp_path / "runs")}
    spec = parse_sweep(data)
    for job in plan(spec):
        expected = 2e-3 * 16 / spec.model.sizes[job.size].width
        runner = JobRunner(spec, job, track=False)
        assert runner().status == "FINISHED"
        assert [m["train/lr"] for _, m in runner.runlog.history if "train/lr" in m] == pytest.approx([expected] * 3)
        state = torch.load(f"{job.workdir}/checkpoints/step-3.pt", weights_only=True)
        groups = state["optimizer"]["param_groups"]
        assert [g["lr"] for g in groups] == pytest.approx([expected] * len(groups))
