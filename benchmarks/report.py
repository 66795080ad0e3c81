"""Benchmark: report generation for a demo-sized sweep (target: under 10 s).

A synthetic demo sweep (tests/report_synth.py: 4 sizes, 60 logged steps each, 81 per-level losses,
5 weightings, 10 fit files) is written to a temporary folder; then

- `scaling report sweeps/demo.yaml --table ... --fits ... --out ...` runs in a fresh process (cold:
  imports, CSV and JSON reading, 5 figures as PNG + SVG, HTML, Markdown), timed from outside;
- `build_report` runs in this process a few times (warm: figures and pages only).

Run: `PYTHONPATH=. .venv/bin/python benchmarks/report.py`
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scaling.report import build_report, load_fits  # noqa: E402
from scaling.spec import load_sweep  # noqa: E402
from tests import report_synth as rs  # noqa: E402

TARGET_S = 10.0


def measure(repeat: int = 3, echo=None) -> dict:
    """Times of `scaling report` in a fresh process (`cold`) and of `build_report` in this one (`warm`), each
    `repeat` times, with their CPU seconds; also the size of index.html and the figure files."""
    spec = load_sweep(rs.DEMO)
    table = rs.demo_table()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table.to_csv(tmp / "table.csv", index=False)
        rs.write_fits(rs.demo_fits(table), tmp / "fits" / "demo")
        levels = sum(c.startswith("eval/level/") for c in table.columns)
        if echo:
            echo(f"table: {len(table)} rows ({table['run_id'].nunique()} runs x {table['step'].nunique()} steps), "
                 f"{levels} levels, {sum(c.startswith('eval/iw/') for c in table.columns)} weightings; "
                 f"{len(list((tmp / 'fits' / 'demo').glob('*.json')))} fit files")

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cold, cold_cpu = [], []
        for i in range(repeat):
            start = time.perf_counter()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, "-m", "scaling.cli", "report", str(rs.DEMO), "--table", "table.csv",
                            "--fits", "fits/demo", "--out", f"reports/cold{i}"], cwd=tmp, env=env, check=True,
                           capture_output=True)
            cold.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cold_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

        fits, _, _ = load_fits([tmp / "fits" / "demo"])
        warm, warm_cpu = [], []
        for i in range(repeat):
            start, cpu = time.perf_counter(), time.process_time()
            build_report(table, fits, tmp / "reports" / f"warm{i}", spec=spec)
            warm.append(time.perf_counter() - start)
            warm_cpu.append(time.process_time() - cpu)
        out = tmp / "reports" / "warm0"
        size_kb = (out / "index.html").stat().st_size / 1024
        files = sorted(p.name for p in (out / "figures").iterdir())
    return {"cold": cold, "cold_cpu": cold_cpu, "warm": warm, "warm_cpu": warm_cpu, "size_kb": size_kb,
            "files": files}


def main() -> int:
    r = measure(echo=print)
    cold, warm, med = r["cold"], r["warm"], statistics.median
    print(f"`scaling report` in a fresh process: median {med(cold):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in cold)}; target < {TARGET_S:.0f} s); "
          f"CPU time median {med(r['cold_cpu']):.2f} s")
    print(f"build_report in-process (figures + pages): median {med(warm):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in warm)}); CPU time median {med(r['warm_cpu']):.2f} s")
    print(f"load average (1 min) during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"index.html {r['size_kb']:.0f} KiB (self-contained); figures: {' '.join(r['files'])}")
    return 0 if med(cold) < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
