"""The command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scaling.plan import plan
from scaling.spec import load_sweep

from .conftest import REPO


def scaling(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("scaling")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "scaling.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_version_and_help():
    out = scaling("--version")
    assert out.returncode == 0 and out.stdout.startswith("scaling ")
    out = scaling("--help")
    assert out.returncode == 0 and "plan" in out.stdout
    out = scaling("plan", "--help")
    assert out.returncode == 0 and "Print every job" in out.stdout and "--json" in out.stdout


@pytest.mark.parametrize("sweep", ["demo.yaml", "vsd-t2i.yaml"])
def test_plan_prints_exact_counts(sweep):
    out = scaling("plan", f"sweeps/{sweep}")
    assert out.returncode == 0, out.stderr
    for job in plan(load_sweep(REPO / "sweeps" / sweep)):
        assert job.run_id in out.stdout
        assert f"{job.params:,}" in out.stdout


def test_plan_json_and_gpu_hours():
    out = scaling("plan", "sweeps/vsd-t2i.yaml", "--json", "--device-tflops", "300")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    jobs = plan(load_sweep(REPO / "sweeps" / "vsd-t2i.yaml"))
    assert [r["run_id"] for r in doc["jobs"]] == [j.run_id for j in jobs]
    xl = doc["jobs"][-1]
    assert xl["params"] == jobs[-1].params
    assert xl["gpu_hours"] == pytest.approx(jobs[-1].total_flops / 300e12 / 3600)


def test_plan_shows_micro_batches_when_a_size_has_one(tmp_path: Path):
    text = (REPO / "sweeps" / "vsd-t2i.yaml").read_text()
    assert "micro-batch" not in scaling("plan", "sweeps/vsd-t2i.yaml").stdout
    sweep = tmp_path / "vsd.yaml"
    sweep.write_text(text.replace("  micro_batch_size: null", "  micro_batch_size: 64", 1))
    out = scaling("plan", str(sweep))
    assert out.returncode == 0, out.stderr
    head, s_row = out.stdout.splitlines()[1:3]
    assert head.split()[5] == "micro-batch" and s_row.split()[4] == "64"  # after the steps ("run id": 2 words)
    doc = json.loads(scaling("plan", str(sweep), "--json").stdout)
    assert {r["micro_batch_size"] for r in doc["jobs"]} == {64}


def test_malformed_sweep_one_line_exit_2(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: demo\nmodel:\n  sizes:\n    M: {depth: 2, width: abc, heads: 2}\n")
    out = scaling("plan", str(bad))
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip() == f"error: {bad}: model.sizes.M.width: expected an integer, got 'abc'"
    assert "Traceback" not in out.stderr


def test_missing_file_exit_2(tmp_path: Path):
    out = scaling("plan", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "cannot read sweep file" in out.stderr and "Traceback" not in out.stderr


def test_spec_doc_is_current():
    out = scaling("spec-doc")
    assert out.returncode == 0
    current = (REPO / "docs" / "sweep-reference.md").read_text()
    assert current == out.stdout, "stale: run scaling spec-doc > docs/sweep-reference.md"
