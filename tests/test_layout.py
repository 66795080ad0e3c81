"""docs/layout.md describes every file and folder that a sweep leaves behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from scaling.cli import main

from .conftest import REPO

LAYOUT = REPO / "docs" / "layout.md"


def layout_patterns() -> dict[str, re.Pattern]:
    """The path column of every table of docs/layout.md, as regexes: `<anything>` is one path part or a
    piece of one; a pattern ending in `/` is a folder."""
    rows = re.findall(r"^\| `([^`]+)` \|", LAYOUT.read_text(), re.M)
    out = {}
    for row in rows:
        parts = re.split(r"(<[^>]+>)", row)
        out[row] = re.compile("".join("[^/]+" if p.startswith("<") else re.escape(p) for p in parts))
    return out


def left_behind(root: Path, inputs: set[Path]) -> list[str]:
    """Every path under root (folders with a trailing `/`), relative to it, but the inputs."""
    paths = []
    for path in sorted(root.rglob("*")):
        if path in inputs:
            continue
        rel = path.relative_to(root).as_posix()
        paths.append(rel + "/" if path.is_dir() and not path.is_symlink() else rel)
    return paths


def test_layout_patterns_parse_and_match_examples():
    patterns = layout_patterns()
    assert len(patterns) > 40
    examples = {"runs/demo/demo-XL-600steps-s0/checkpoints/step-600.pt":
                "runs/<sweep>/<run id>/checkpoints/step-<n>.pt",
                "fits/demo/iw-laplace__power__params.json": "fits/<name>/<metric>__<law>__<axis>.json",
                "runs/demo/slurm/679_0_0_log.out": "runs/<sweep>/slurm/<job id>_<rank>_log.out"}
    for path, row in examples.items():
        assert patterns[row].fullmatch(path), (row, path)
    assert not patterns["runs/<sweep>/<run id>/"].fullmatch("runs/demo/x/checkpoints/")


@pytest.mark.slow
def test_every_path_a_local_sweep_leaves_is_in_docs_layout(tmp_path, tiny_sweep, monkeypatch):
    """`scaling run` of a small sweep (3 sizes, 6 steps): train, export, fit, report; then every file and
    folder in its folder must match a path of docs/layout.md."""
    monkeypatch.chdir(tmp_path)  # fits/ and reports/ go to the current folder, like the store by default
    data = yaml.safe_load(tiny_sweep.read_text())
    data["launch"] = {"workdir": "runs", "max_parallel": 3}  # the defaults' relative paths, all jobs at once
    data["tracking"] = {"uri": None}  # the embedded store ./mlflow.db
    data["fit"] = {"laws": ["power"], "holdout": ["L"], "bootstrap": 20}
    tiny_sweep.write_text(yaml.safe_dump(data))
    assert main(["run", str(tiny_sweep)]) == 0
    patterns = layout_patterns().values()
    paths = left_behind(tmp_path, {tiny_sweep})
    assert {"mlflow.db", "runs/tiny/table.csv", "reports/tiny/index.html"} <= set(paths)
    assert any(p.startswith("fits/tiny/") and p.endswith(".json") for p in paths)
    missing = [p for p in paths if not any(pat.fullmatch(p) for pat in patterns)]
    assert not missing, f"docs/layout.md does not describe: {missing}"
