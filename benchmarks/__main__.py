"""Every benchmark figure of the project in one run, printed as one table at the end (docs/benchmarks.md).

    PYTHONPATH=$PWD python -m benchmarks                       # everything (~15 min on 2 cores)
    PYTHONPATH=$PWD python -m benchmarks --skip demo,slurm     # without the demo run and the SLURM cluster
    PYTHONPATH=$PWD python -m benchmarks --quick --skip demo,slurm   # smoke test: tiny settings (~30 s)

Measurements, in this order (each can be skipped; a failed one is reported and the exit status is 1):
demo     `scaling run sweeps/demo.yaml` in an empty folder (benchmarks/demo.py)
overhead the real job vs a bare torch loop of the same training, every demo size (benchmarks/overhead.py)
export   `scaling export` rows/s on a store of 100 runs x 1,000 steps, and on the demo's runs (benchmarks/track.py)
fit      fit + bootstrap of the demo's laws, 1,000 resamples, on the demo's table (benchmarks/fit.py)
report   `scaling report` of a demo-sized sweep in a fresh process (benchmarks/report.py)
slurm    submitting a 100-job sweep to the dev SLURM cluster, held and cancelled (benchmarks/slurm_submit.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.overhead import DEMO, ROOT

MEASUREMENTS = ("demo", "overhead", "export", "fit", "report", "slurm")

QUICK = {"train": {"budget": 30, "eval_every": 10, "ckpt_every": 15, "log_every": 5},
         "evaluation": {"samples": 8, "lambda_step": 2.0}, "fit": {"bootstrap": 50}}
"Overrides of the demo sweep under --quick: every code path (3 evaluations: the curve fits need them), tiny work."


@dataclass(frozen=True)
class Figure:
    """One row of the final table."""

    name: str
    value: float
    unit: str
    target: str = ""
    note: str = ""


@dataclass
class Context:
    sweep: Path
    quick: bool
    folder: Path
    repeat: int
    sizes: list[str] | None
    found: dict = field(default_factory=dict)
    "What one measurement leaves for the next (the demo's table and store, the overhead's store)."

    @property
    def overrides(self) -> dict | None:
        return QUICK if self.quick else None


def echo(line: str) -> None:
    print(line, flush=True)


def bench_demo(ctx: Context) -> list[Figure]:
    from benchmarks.demo import run_demo

    r = run_demo(ctx.sweep, ctx.folder / "demo", ctx.overrides)
    echo(r["output"].rstrip())
    if r["exit"] and r["table"] is None:
        raise RuntimeError(f"`scaling run` exited with {r['exit']} and left no table")
    ctx.found["demo"] = r
    figures = [Figure("demo wall time", r["wall_s"], "s", "< 300",
                      f"`scaling run`, {r['jobs']} jobs, exit {r['exit']}")]
    for (law, size), (err, inside) in r["backtest"].items():
        where = {True: "inside", False: "OUTSIDE", None: "no"}[inside]
        figures.append(Figure(f"demo backtest {size}, {law}", 100 * err, "%", "|e| < 2",
                              f"{r['metric']}; {where} interval"))
    return figures


def bench_overhead(ctx: Context) -> list[Figure]:
    from benchmarks.overhead import loop_spread, measure, table_lines, total

    sizes = ctx.sizes
    if sizes is None and ctx.quick:
        from scaling.spec import load_sweep

        sizes = list(load_sweep(ctx.sweep).model.sizes)[:1]
    folder = ctx.folder / "overhead"
    per_size = measure(ctx.sweep, ctx.overrides, sizes, ctx.repeat, folder, echo=echo)
    echo("\n".join(table_lines(per_size)))
    ctx.found["overhead"] = (f"sqlite:///{folder / 'mlflow.db'}", per_size)
    t = total(per_size)
    a = t.bare_wall
    which = "all sizes" if len(per_size) > 1 else f"size {per_size[0].size}"
    repeats = f"; per repeat {', '.join(f'{v:+.1%}' for v in t.per_repeat)}" if len(t.runs) > 1 else ""
    figures = [
        Figure(f"overhead vs bare loop, {which}", 100 * t.overhead, "%", "< 3",
               f"wall: job {t.job_wall:.1f} s vs bare {a:.1f} s; same losses: {'yes' if t.same_loss else 'NO'}"
               f"{repeats}"),
        Figure("  of which evaluation", 100 * t.eval_s / a, "%", "", f"{t.eval_s:.1f} s"),
        Figure("  of which checkpoints", 100 * t.checkpoint_s / a, "%", "", f"{t.checkpoint_s:.2f} s"),
        Figure("  of which tracking", 100 * t.tracking_s / a, "%", "",
               f"{t.tracking_s:.1f} s, incl. the launcher's {t.launcher_s:.2f} s (relay, import share)"),
        Figure("  of which set-up + loop", 100 * t.loop_s / a, "%", "", "held-out set, evaluator; noise"),
    ]
    if len(t.runs) > 1:
        figures.append(Figure("  set-up + loop of one pair, spread", 100 * loop_spread(per_size), "% std", "",
                              "std over the repeats, pooled over the sizes: the same training timed in two processes"))
    figures += [
        Figure(f"overhead in CPU time, {which}", 100 * t.cpu_overhead, "%", "< 3",
               f"job {t.job_cpu:.1f} s vs bare {t.bare_cpu:.1f} s (all threads)"),
        Figure(f"overhead, timed parts, {which}", 100 * (t.eval_s + t.checkpoint_s + t.tracking_s) / a, "%", "< 3",
               "evaluation + checkpoints + tracking, each timed: the extra work without the loop's timing noise"),
    ]
    if len(per_size) > 1:
        figures += [Figure(f"overhead, size {f.size}", 100 * f.overhead, "%", "< 3",
                           f"{f.params:,} params, {f.steps} steps, bare {f.bare_wall:.1f} s") for f in per_size]
    return figures


def bench_export(ctx: Context) -> list[Figure]:
    from benchmarks.track import RUNS, STEPS, synthetic_store, time_export

    runs, steps = (4, 100) if ctx.quick else (RUNS, STEPS)
    uri = synthetic_store(Path(tempfile.gettempdir()) / "scaling-bench", runs, steps)
    table, times = time_export(uri, "bench", repeat=1 if ctx.quick else 3)
    best = min(times)
    figures = [Figure("export rows/s, synthetic store", len(table) / best, "rows/s", "> 20000",
                      f"{runs} runs x {steps} steps x 5 metrics: {len(table):,} rows in {best:.2f} s (best of "
                      f"{len(times)})")]
    if "demo" in ctx.found and ctx.found["demo"]["table"] is not None:
        uri, experiment, what = ctx.found["demo"]["uri"], ctx.found["demo"]["experiment"], "the demo's store"
    elif "overhead" in ctx.found:
        uri, experiment, what = ctx.found["overhead"][0], f"{_name(ctx)}-r0", "the overhead runs' store"
    else:
        return figures
    table, times = time_export(uri, experiment, repeat=1 if ctx.quick else 3)
    cols = sum(str(c).startswith("eval/") for c in table.columns)
    figures.append(Figure("export of the demo's runs", min(times), "s", "",
                          f"{what}: {table['run_id'].nunique()} runs, {len(table)} rows, {cols} eval columns; "
                          f"{len(table) / min(times):,.0f} rows/s"))
    return figures


def _name(ctx: Context) -> str:
    from scaling.spec import load_sweep

    return load_sweep(ctx.sweep, ctx.overrides).name


def bench_fit(ctx: Context) -> list[Figure]:
    from benchmarks.demo import write_copy
    from benchmarks.fit import demo_fit

    folder = ctx.folder / "fit"
    sweep = write_copy(ctx.sweep, folder, ctx.overrides)
    demo = ctx.found.get("demo")
    if demo and demo["table"] is not None:
        table, what = demo["table"], "the demo's table"
    else:
        sys.path.insert(0, str(ROOT))
        from scaling.spec import load_sweep
        from tests import report_synth

        table, what = folder / "table.csv", "a synthetic demo table"
        report_synth.demo_table(sizes=tuple(load_sweep(sweep).model.sizes)).to_csv(table, index=False)
    resamples = 50 if ctx.quick else 1000
    r = demo_fit(str(sweep), str(table), str(folder / "fits"), resamples)
    note = f"{r['laws']} laws x {resamples} resamples, {what}" + (f"; exit {r['exit']}" if r["exit"] else "")
    return [Figure("fit + bootstrap, primary metric", r["primary_s"], "s", "< 10", note),
            Figure("`scaling fit`, every weighting + curves", r["all_s"], "s", "", f"{what}, {resamples} resamples")]


def bench_report(ctx: Context) -> list[Figure]:
    from benchmarks.report import TARGET_S, measure

    r = measure(1 if ctx.quick else 3)
    return [Figure("`scaling report`, fresh process", statistics.median(r["cold"]), "s", f"< {TARGET_S:.0f}",
                   f"synthetic demo-sized sweep, median of {len(r['cold'])}"),
            Figure("report figures + pages, in-process", statistics.median(r["warm"]), "s", "",
                   f"median of {len(r['warm'])}")]


def bench_slurm(ctx: Context) -> list[Figure]:
    from benchmarks.slurm_submit import cli_once, submit_once

    started = subprocess.run(["bash", str(ROOT / "slurm" / "dev-cluster.sh"), "start"], capture_output=True, text=True)
    if started.returncode:
        raise RuntimeError(f"the dev SLURM cluster did not start: {started.stderr.strip()[-500:]}")
    jobs, repeat = (8, 1) if ctx.quick else (100, ctx.repeat if ctx.repeat > 1 else 3)
    arrays = [submit_once(False, jobs) for _ in range(repeat)]
    whole = [cli_once(jobs) for _ in range(repeat)]
    return [Figure(f"SLURM submit, {jobs} jobs as arrays", statistics.median(t for t, _ in arrays), "s", "< 2",
                   f"{arrays[0][1]} sbatch calls, held then cancelled; median of {repeat}"),
            Figure(f"`scaling submit`, {jobs} jobs, whole command", statistics.median(whole), "s", "",
                   f"Python start, imports, plan, sbatch; median of {repeat}")]


BENCHES: dict[str, Callable[[Context], list[Figure]]] = {
    "demo": bench_demo, "overhead": bench_overhead, "export": bench_export, "fit": bench_fit,
    "report": bench_report, "slurm": bench_slurm}


def _value(f: Figure) -> str:
    if not math.isfinite(f.value):
        return "nan"
    if f.unit == "%":
        return f"{f.value:+.2f}"
    return f"{f.value:,.0f}" if abs(f.value) >= 1000 else f"{f.value:.3g}" if abs(f.value) < 10 else f"{f.value:.1f}"


def table_lines(figures: list[Figure]) -> list[str]:
    rows = [["figure", "value", "unit", "target", "note"]]
    rows += [[f.name, _value(f), f.unit, f.target, f.note] for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), *(c.ljust(w) for c, w in zip(r[2:4], widths[2:])),
                       r[4]]).rstrip() for r in rows]


def machine() -> str:
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}, "
            f"commit {commit.stdout.strip() or '?'}, load average {load}")


def machine_speed(sweep: Path, steps: int = 40) -> str:
    """How fast this machine trains the sweep's first size: the bare loop's mean time per step over `steps` steps
    (the sweep's threads, data generation included), and a 1-thread fp32 512x512 matmul. The same code ran
    twice as slow per step of S on one 2-core machine as on another (docs/benchmarks.md): quote figures with this."""
    import torch

    from benchmarks.overhead import bare_loop
    from scaling.plan import plan
    from scaling.spec import load_sweep

    spec = load_sweep(sweep, {"train": {"budget": steps}})
    job = plan(spec)[0]
    threads = torch.get_num_threads()
    try:
        _, _, _, loop = bare_loop(spec, job)
        torch.set_num_threads(1)
        a = torch.randn(512, 512)
        a @ a
        t = time.perf_counter()
        for _ in range(20):
            a @ a
        gflops = 20 * 2 * 512**3 / (time.perf_counter() - t) / 1e9
    finally:
        torch.set_num_threads(threads)
    return (f"machine speed: {job.size} trains at {1e3 * loop / steps:.1f} ms per step (bare loop, {steps} steps, "
            f"batch {job.batch_size}); matmul 512x512 fp32 {gflops:.0f} GFLOP/s on 1 thread")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                epilog="Measurements: " + ", ".join(MEASUREMENTS))
    p.add_argument("--quick", action="store_true", help="tiny settings (30 steps, first size, 8 SLURM jobs): a smoke "
                   "test of every measurement, not figures to quote")
    p.add_argument("--skip", default="", help="comma-separated measurements to leave out, e.g. demo,slurm")
    p.add_argument("--only", default="", help="comma-separated measurements to run (default: all)")
    p.add_argument("--sweep", type=Path, default=DEMO, help="the demo sweep (default: sweeps/demo.yaml)")
    p.add_argument("--sizes", default=None, help="overhead: comma-separated sizes (default: all; --quick: the first)")
    p.add_argument("--repeat", type=int, default=1, help="overhead: runs per size (medians); slurm: repeats (3)")
    p.add_argument("--folder", type=Path, default=None, help="keep the work files here (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON to this file")
    args = p.parse_args(argv)
    only = {n.strip() for n in (args.only or ",".join(MEASUREMENTS)).split(",") if n.strip()}
    skip = {n.strip() for n in args.skip.split(",") if n.strip()}
    unknown = (only | skip) - set(MEASUREMENTS)
    names = only - skip
    if unknown:
        p.error(f"unknown measurement(s) {', '.join(sorted(unknown))}; valid: {', '.join(MEASUREMENTS)}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

    with tempfile.TemporaryDirectory(prefix="scaling-bench-") as tmp:
        ctx = Context(args.sweep.resolve(), args.quick, (args.folder or Path(tmp)).resolve(), max(1, args.repeat),
                      args.sizes.split(",") if args.sizes else None)
        echo(f"benchmarks{' (--quick)' if args.quick else ''} on {machine()}")
        echo(machine_speed(ctx.sweep, 10 if args.quick else 40))
        figures: list[Figure] = []
        failed = []
        start = time.perf_counter()
        for name in (n for n in MEASUREMENTS if n in names):
            echo(f"\n== {name}")
            t = time.perf_counter()
            try:
                figures += BENCHES[name](ctx)
            except Exception as e:  # noqa: BLE001 - reported in the table; the other measurements still run
                logging.exception("%s failed", name)
                failed.append(name)
                figures.append(Figure(f"{name} FAILED", math.nan, "", "", f"{type(e).__name__}: {e}"[:200]))
            echo(f"({name}: {time.perf_counter() - t:.0f} s)")
    echo(f"\n== figures ({time.perf_counter() - start:.0f} s in all; load average now "
         f"{' '.join(f'{v:.2f}' for v in os.getloadavg())})")
    echo("\n".join(table_lines(figures)))
    if args.json:
        args.json.write_text(json.dumps([asdict(f) for f in figures], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
