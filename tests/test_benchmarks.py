"""`python -m benchmarks --quick`: the overhead, export and fit measurements (not the demo run, SLURM or the
report, which take longer) on tiny settings give a finite figure each in the printed table; the bare loop
that the job is compared with trains exactly as the job does."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from benchmarks.__main__ import main
from tests.conftest import REPO

EXPECTED = ["overhead vs bare loop, size S", "  of which evaluation", "  of which checkpoints", "  of which tracking",
            "  of which set-up + loop", "overhead in CPU time, size S", "overhead, timed parts, size S",
            "export rows/s, synthetic store",
            "export of the demo's runs", "fit + bootstrap, primary metric", "`scaling fit`, every weighting + curves"]


def printed_table(stdout: str) -> dict[str, str]:
    """figure name -> value as printed, from the table after '== figures'."""
    lines = stdout.split("\n== figures", 1)[1].splitlines()[1:]
    assert lines[0].split()[:2] == ["figure", "value"], lines[0]
    rows = {}
    for line in lines[1:]:
        m = re.match(r"^(.+?)\s{2,}(\S+)\s", line)
        assert m, line
        rows[m.group(1)] = m.group(2)
    return rows


@pytest.mark.slow
def test_quick_run_prints_every_figure(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = ["--quick", "--skip", "demo,slurm,report", "--json", str(out), "--folder", str(tmp_path / "work")]
    done = subprocess.run([sys.executable, "-m", "benchmarks", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    printed = printed_table(done.stdout)
    assert list(printed) == EXPECTED
    figures = {f["name"]: f for f in json.loads(out.read_text())}
    for name, text in printed.items():
        value = figures[name]["value"]
        assert math.isfinite(value) and math.isfinite(float(text.replace(",", ""))), (name, text)
        assert float(text.replace(",", "")) == pytest.approx(value, rel=0.01, abs=0.01), name
    head = figures["overhead vs bare loop, size S"]
    assert "same losses: yes" in head["note"]  # the bare loop is the job's training, step for step
    parts = sum(figures[n]["value"] for n in EXPECTED[1:5])
    assert parts == pytest.approx(head["value"], abs=1e-6)  # the parts add up to the overhead
    timed = figures["overhead, timed parts, size S"]["value"]
    assert timed == pytest.approx(sum(figures[n]["value"] for n in EXPECTED[1:4]), abs=1e-6) and timed > 0
    assert figures["export rows/s, synthetic store"]["value"] > 0
    assert "same losses" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("argv", [["--skip", "demo,nope"], ["--only", "nope"]])
def test_unknown_measurement_is_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "unknown measurement(s) nope; valid: demo, overhead" in capsys.readouterr().err


def test_overhead_per_repeat_and_the_spread_of_the_same_training():
    """Each repeat's pair gives its own overhead (summed over the sizes for all sizes), and the set-up + loop
    difference of single pairs gives the timing noise, pooled over the sizes about each size's mean."""
    from benchmarks.overhead import SizeOverhead, loop_spread, total

    def size(name, runs):
        return SizeOverhead(name, 1, 1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, True, runs)

    s = size("S", ((10.0, 10.5, 10.1), (10.0, 10.2, 9.9), (11.0, 11.4, 11.0)))
    m = size("M", ((20.0, 20.6, 20.4), (20.0, 20.4, 20.0), (20.0, 20.8, 20.2)))
    assert s.per_repeat == pytest.approx([0.05, 0.02, 0.4 / 11])
    assert s.loop_per_repeat == pytest.approx([0.01, -0.01, 0.0])
    assert total([s, m]).per_repeat == pytest.approx([1.1 / 30, 0.6 / 30, 1.2 / 31])
    assert loop_spread([s, m]) == pytest.approx(0.01)  # S: ±1% about 0; M: 2%, 0%, 1% about 1%
    assert math.isnan(loop_spread([size("S", ((10.0, 10.5, 10.1),))]))  # one repeat: no spread
