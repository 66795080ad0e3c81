"""The guides of docs/guides/, run as written: their files, their commands, and the output they show."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from scaling.cli import main

from .conftest import REPO

GUIDES = REPO / "docs" / "guides"
FENCE = re.compile(r"```([a-z]*)\n(.*?)^```", re.S | re.M)


def blocks(guide: str) -> list[tuple[str, str, int, int]]:
    """(language, text, start, end) of every fenced block of a guide, in order."""
    text = (GUIDES / guide).read_text()
    return [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]


def file_block(guide: str, first_line: str) -> str:
    """The code block whose first line is `first_line` (a file the guide asks you to write)."""
    (code,) = [text for _, text, _, _ in blocks(guide) if text.startswith(first_line)]
    return code


def commands_with_output(guide: str) -> list[tuple[str, list[str]]]:
    """Each `scaling ...` line of a bash block, with the lines of the plain block right after it (its
    output as the guide shows it; `...` lines are elisions), or [] when none follows."""
    text = (GUIDES / guide).read_text()
    found = blocks(guide)
    out = []
    for i, (lang, body, _, end) in enumerate(found):
        if lang != "bash":
            continue
        lines = [line for line in body.splitlines() if line.startswith("scaling ")]
        shown: list[str] = []
        if len(lines) == 1 and i + 1 < len(found) and found[i + 1][0] == "" and not text[end:found[i + 1][2]].strip():
            shown = [line for line in found[i + 1][1].splitlines() if line.strip() and line.strip() != "..."]
        out += [(line, shown if len(lines) == 1 else []) for line in lines]
    return out


def run_cli(line: str, capsys) -> str:
    """Run a guide's `scaling ...` line in this process; its stdout."""
    assert main(shlex.split(line, comments=True)[1:]) == 0, line
    return capsys.readouterr().out


NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def same_line(shown: str, printed: str) -> bool:
    """The same text, and the same numbers to 1% (or 1e-6 absolute): fits are deterministic on one machine,
    but their last digits follow the CPU's floating point, e.g. the lower bound of a parameter that the
    data barely determine (E's interval [5.8e-08, 1.88] on one machine, [1.3e-07, 1.88] on another)."""
    if NUMBER.sub("#", shown.rstrip()) != NUMBER.sub("#", printed.rstrip()):
        return False
    pairs = zip(NUMBER.findall(shown), NUMBER.findall(printed))
    return all(abs(float(a) - float(b)) <= max(1e-6, 0.01 * abs(float(a))) for a, b in pairs)


def assert_shown(line: str, shown: list[str], printed: str) -> None:
    got = printed.splitlines()
    missing = [s for s in shown if not any(same_line(s, p) for p in got)]
    assert not missing, f"`{line}` no longer prints, as the guide shows:\n" + "\n".join(missing) + \
        "\n--- it printed:\n" + printed


def test_shown_lines_match_to_one_percent():
    shown = "  E = 1.137 [5.838e-08, 1.88]  predicted 2.463 [2.364, 2.574] (95%), error -0.38%"
    assert same_line(shown, "  E = 1.137 [1.321e-07, 1.88]  predicted 2.463 [2.365, 2.574] (95%), error -0.38%")
    assert not same_line(shown, "  E = 1.137 [5.838e-08, 1.88]  predicted 2.563 [2.364, 2.574] (95%), error -0.38%")
    assert not same_line(shown, "  E = 1.137 [5.838e-08, 1.88]  predicted 2.463 [2.364, 2.574] (95%), error -0.38")
    assert not same_line("holdout XL: 0.05 (inside)", "holdout XL: 0.05 (outside)")


@pytest.mark.slow
def test_fit_from_csv_guide(tmp_path, monkeypatch, capsys):
    """Both CSVs, every command, and every output line the guide shows (fits are deterministic)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "compute-optimal.csv").write_text(file_block("fit-from-csv.md", "model,n_params,tokens,loss"))
    shutil.copytree(REPO / "tests" / "data" / "openlm-overtraining", tmp_path / "tests/data/openlm-overtraining")
    ran = commands_with_output("fit-from-csv.md")
    assert [line.split()[1] for line, _ in ran] == ["fit", "fit", "report", "report"]
    for line, shown in ran:
        assert_shown(line, shown, run_cli(line, capsys))
    assert (tmp_path / "reports" / "compute-optimal" / "index.html").is_file()
    guide_csv = pd.read_csv(tmp_path / "compute-optimal.csv")  # the guide's rows are the data's 1x runs
    data = pd.read_csv(tmp_path / "tests/data/openlm-overtraining/c4_original.csv")
    data = data[data["chinchilla_multiplier"] == 1.0].sort_values("params")
    assert guide_csv["n_params"].tolist() == data["params"].tolist()
    assert guide_csv["loss"].tolist() == pytest.approx(data["loss_c4_val"].tolist(), abs=1e-4)


@pytest.mark.slow
def test_own_training_code_guide_b_runs_logged_with_plain_mlflow(tmp_path, monkeypatch, capsys):
    """Runs logged by plain MLflow calls with their own names -> export -> fit -> report, as shown."""
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "log_my_runs.py"
    script.write_text(file_block("own-training-code.md", '"""log_my_runs.py'))
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, check=True, capture_output=True)
    ran = [(line, shown) for line, shown in commands_with_output("own-training-code.md")
           if "sweeps/mlp.yaml" not in line]
    assert [line.split()[1] for line, _ in ran] == ["export", "fit", "report"]
    for line, shown in ran:
        assert_shown(line, shown, run_cli(line, capsys))
    table = pd.read_csv(tmp_path / "my-models.csv")
    assert dict(zip(table["size"], table["params"])) == {"tiny": 1e6, "small": 4e6, "base": 16e6, "large": 64e6,
                                                         "huge": 256e6}


@pytest.mark.slow
def test_own_training_code_guide_a_your_function_run_by_scaling(tmp_path, monkeypatch, capsys):
    """The guide's trainer and sweep (fewer steps): the table has the MLP's own parameter counts, and
    `scaling run` fits and reports the sweep's `fit.metric`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_trainer.py").write_text(file_block("own-training-code.md", '"""my_trainer.py'))
    monkeypatch.syspath_prepend(str(tmp_path))
    sweep = yaml.safe_load(file_block("own-training-code.md", "name: mlp"))
    sweep["train"].update(budget=40, eval_every=20, ckpt_every=20)
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "mlp.yaml").write_text(yaml.safe_dump(sweep))
    ((line, _),) = [c for c in commands_with_output("own-training-code.md") if "sweeps/mlp.yaml" in c[0]]
    out = run_cli(line, capsys)
    assert "val/loss  power  over params  (3 points; sizes S, M, L)" in out
    table = pd.read_csv(tmp_path / "runs" / "mlp" / "table.csv")
    widths = {"S": 8, "M": 16, "L": 32, "XL": 64}  # depth 2: Linear(1, w), Linear(w, w), Linear(w, 1)
    assert dict(zip(table["size"], table["params"])) == {s: 3 * w + 1 + w * w + w for s, w in widths.items()}
    assert dict(zip(table["size"], table["params"]))["L"] == 1153  # the count the guide quotes
    assert (tmp_path / "fits" / "mlp" / "val-loss__power__params.json").is_file()
    assert (tmp_path / "reports" / "mlp" / "index.html").is_file()
