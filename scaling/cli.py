"""`scaling` command line: plan, run, submit, status, export, fit, report, tune.

Each subcommand is a function `cmd_<name>(args) -> int` registered in `COMMANDS` with its parser.
A `ScalingError` becomes one line on stderr and its exit code (2 for bad input); never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from scaling.errors import ScalingError

log = logging.getLogger("scaling")


def _version() -> str:
    try:
        return version("scaling")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


# --- plan -------------------------------------------------------------------------------------------

def _si(x: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def plan_rows(spec, jobs, device_tflops: float | None) -> list[dict]:
    rows = []
    for job in jobs:
        r = job.resources
        row = {
            "run_id": job.run_id, "size": job.size, "params": job.params, "budget": job.budget.label,
            "seed": job.seed, "steps": job.steps, "batch_size": job.batch_size, "lr": job.lr,
            "flops_per_step": job.flops_per_step, "total_flops": job.total_flops,
            "resources": {"nodes": r.nodes, "gpus": r.gpus, "tasks_per_node": r.tasks_per_node, "cpus": r.cpus,
                          "mem_gb": r.mem_gb, "time_min": r.time_min, "partition": r.partition,
                          "account": r.account, "qos": r.qos, "constraint": r.constraint},
            "workdir": job.workdir,
        }
        if device_tflops:
            row["gpu_hours"] = job.gpu_hours(device_tflops * 1e12)
        rows.append(row)
    return rows


def cmd_plan(args: argparse.Namespace) -> int:
    from scaling.plan import plan
    from scaling.spec import load_sweep

    spec = load_sweep(args.sweep)
    jobs = plan(spec)
    rows = plan_rows(spec, jobs, args.device_tflops)
    if args.json:
        print(json.dumps({"sweep": spec.name, "sha256": spec.sha256, "experiment": spec.experiment,
                          "backend": spec.launch.backend, "jobs": rows}, indent=2))
        return 0
    head = ["run id", "size", "params", "steps", "FLOPs/step", "total FLOPs", "lr", "resources"]
    if args.device_tflops:
        head.insert(6, "GPU-h")
    table = []
    for row, job in zip(rows, jobs):
        r = job.resources
        res = f"{r.nodes}x{r.gpus}gpu {r.cpus}cpu {r.mem_gb:g}G {r.time_min}min"
        res += f" {r.partition}" if r.partition else ""
        cells = [row["run_id"], row["size"], f"{job.params:,}", str(job.steps), _si(job.flops_per_step),
                 _si(job.total_flops), f"{job.lr:.3g}", res]
        if args.device_tflops:
            cells.insert(6, f"{row['gpu_hours']:.1f}")
        table.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *table)]
    print(f"sweep {spec.name} ({spec.source}): {len(jobs)} jobs, backend {spec.launch.backend}, "
          f"experiment {spec.experiment}")
    for cells in [head, *table]:
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())
    total = sum(j.total_flops for j in jobs)
    line = f"total: {_si(total)} FLOPs"
    if args.device_tflops:
        line += f", {sum(r['gpu_hours'] for r in rows):.1f} GPU-hours at {args.device_tflops:g} TFLOP/s achieved"
    print(line)
    return 0


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="expand a sweep into its jobs and print them (nothing runs)",
                       description="Print every job of a sweep: run id, exact parameters, FLOPs, resources.")
    p.add_argument("sweep", help="sweep YAML file, e.g. sweeps/demo.yaml")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.add_argument("--device-tflops", type=float, default=None, metavar="TFLOPS",
                   help="achieved TFLOP/s per GPU, to estimate GPU-hours (e.g. 300 for bf16 on an H100 at ~40%% MFU)")
    p.set_defaults(func=cmd_plan)


def cmd_spec_doc(args: argparse.Namespace) -> int:
    from scaling.specdoc import render

    print(render())
    return 0


def _add_spec_doc(sub) -> None:
    p = sub.add_parser("spec-doc", help="print the sweep-file reference (every key, default and meaning)",
                       description="Print the sweep-file reference in Markdown (docs/sweep-reference.md).")
    p.set_defaults(func=cmd_spec_doc)


# --- run / status / export ----------------------------------------------------------------------------

def _load(args: argparse.Namespace):
    from scaling.spec import load_sweep

    overrides = {"launch": {"max_parallel": args.max_parallel}} if getattr(args, "max_parallel", None) else None
    return load_sweep(args.sweep, overrides)


def _printer(stream=sys.stderr):
    """Progress callback: redraws in place on a terminal, else prints when something changed (<= every 30 s)."""
    from scaling.launch.progress import ProgressView

    view, state = ProgressView(), {"drawn": 0, "last": "", "at": 0.0}

    def show(statuses) -> None:
        import time

        lines = view.lines(statuses)
        if stream.isatty():
            stream.write(f"\x1b[{state['drawn']}F\x1b[J" if state["drawn"] else "")
            stream.write("\n".join(lines) + "\n")
            state["drawn"] = len(lines)
        else:
            key = "\n".join(line.rsplit("ETA", 1)[0] for line in lines)
            if key != state["last"] and time.monotonic() - state["at"] >= 30 or lines[0].startswith(
                    f"{len(statuses)}/{len(statuses)}"):
                stream.write("\n".join(lines) + "\n")
                state["last"], state["at"] = key, time.monotonic()
        stream.flush()

    return show


def cmd_run(args: argparse.Namespace) -> int:
    from scaling.launch.progress import summary_lines
    from scaling.launch.sweep import run_sweep

    spec = _load(args)
    outcome = run_sweep(spec, backend=args.backend, progress=_printer(), fit=not args.no_fit)
    print("\n".join(summary_lines(outcome.statuses, outcome.results)))
    if outcome.table:
        print(f"table: {outcome.table}")
    for note in outcome.notes:
        print(note)
    return 0 if outcome.ok else 1


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="train every job of a sweep, export the table, then fit and report",
                       description="Plan, launch (finished jobs are skipped, unfinished ones resume from their "
                                   "checkpoints), wait with a progress display, export runs/<sweep>/table.csv, "
                                   "then fit and report. Exit status 1 if a job did not finish.")
    p.add_argument("sweep", help="sweep YAML file, e.g. sweeps/demo.yaml")
    p.add_argument("--backend", choices=["local", "slurm", "ray"], default=None,
                   help="where jobs run (default: launch.backend of the sweep)")
    p.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="local backend: jobs at once (default: launch.max_parallel)")
    p.add_argument("--no-fit", action="store_true", help="stop after exporting the table")
    p.set_defaults(func=cmd_run)


def cmd_status(args: argparse.Namespace) -> int:
    from scaling.launch.progress import status_lines
    from scaling.launch.sweep import sweep_status

    print("\n".join(status_lines(sweep_status(_load(args), backend=args.backend))))
    return 0


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="one line per job: state, step, latest L_iw, MLflow run link",
                       description="Show each job of a sweep: state, step, latest importance-weighted loss, "
                                   "MLflow run link and log folder. Starts nothing.")
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--backend", choices=["local", "slurm", "ray"], default=None,
                   help="backend to ask about queued jobs (default: launch.backend of the sweep)")
    p.set_defaults(func=cmd_status)


def cmd_export(args: argparse.Namespace) -> int:
    from scaling.errors import SpecError
    from scaling.export import write_table
    from scaling.track import export_table

    if args.sweep:
        spec = _load(args)
        uri, experiment = args.uri or spec.tracking.uri, args.experiment or spec.experiment
        from scaling.launch.sweep import table_path

        out = args.output or table_path(spec)
    elif args.experiment:
        uri, experiment, out = args.uri, args.experiment, args.output or f"{args.experiment}.csv"
    else:
        raise SpecError("give a sweep file, or --experiment NAME (and --uri URI for a store other than ./mlflow.db)")
    table = export_table(uri, experiment, metrics=args.metric or None, size_col=args.size_col,
                         params_col=args.params_col, step_col=args.step_col)
    path = write_table(table, out)
    print(f"{len(table)} rows, {table['run_id'].nunique()} runs, {len(table.columns)} columns -> {path}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="logged runs -> a tidy table (CSV, or Parquet for a .parquet name)",
                       description="Write one row per (run, step) with run_id, sweep, size, params, budget, seed, "
                                   "status, step, samples, flops and one column per metric. Re-logged steps "
                                   "(after a resume) keep their last value.")
    p.add_argument("sweep", nargs="?", help="sweep YAML file (its store and experiment)")
    p.add_argument("--experiment", help="MLflow experiment to export (instead of a sweep's)")
    p.add_argument("--uri", help="MLflow tracking URI (default: the sweep's, else sqlite:///./mlflow.db)")
    p.add_argument("--size-col", default="scaling.size", metavar="NAME",
                   help="tag, param or metric holding the size name (default: scaling.size)")
    p.add_argument("--params-col", default="job.params", metavar="NAME",
                   help="tag, param or metric holding the parameter count (default: job.params)")
    p.add_argument("--step-col", default=None, metavar="NAME",
                   help="metric whose value is the step (default: MLflow's step)")
    p.add_argument("--metric", action="append", metavar="NAME",
                   help="metric to export (repeatable; default: all)")
    p.add_argument("-o", "--output", default=None, metavar="PATH",
                   help="output file (default: runs/<sweep>/table.csv, or <experiment>.csv)")
    p.set_defaults(func=cmd_export)


# --- tune -------------------------------------------------------------------------------------------

def cmd_tune(args: argparse.Namespace) -> int:
    from scaling.tune import tune

    result = tune(args.sweep, args.size, args.search, args.samples, steps=args.steps, eval_every=args.eval_every,
                  grace=args.grace, reduction=args.reduction, seed=args.seed, max_concurrent=args.concurrent,
                  max_retries=args.retries, address=args.address, num_cpus=args.num_cpus, name=args.name)
    names = [p.name for p in result.params]
    print(f"tune {result.name}: {len(result.trials)} trials of size {result.size}, best first ({result.metric})")
    rows = [["trial", "status", "step", *names, "L_iw"]]
    for t in sorted(result.trials, key=lambda t: (t.liw is None, t.liw or 0.0)):
        rows.append([t.trial, t.status, "" if t.step is None else str(t.step),
                     *(f"{t.values[n]:.4g}" if isinstance(t.values[n], float) else str(t.values[n]) for n in names),
                     "" if t.liw is None else f"{t.liw:.5g}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print(f"best: {', '.join(f'{n}={result.best.values[n]}' for n in names)} ({result.metric} {result.best.liw:.5g})")
    print(f"overlay: {result.overlay} (add `include: [{result.overlay.name}]` to the sweep to use it)")
    print(f"table: {result.table}\nfigure: {result.figure}")
    print(f"MLflow: experiment {result.experiment}, parent run {result.url}")
    return 0


def _add_tune(sub) -> None:
    p = sub.add_parser("tune", help="search one size's hyper-parameters with Ray Tune (ASHA on L_iw)",
                       description="Ray Tune search for one size: every trial trains the size and reports the primary "
                                   "L_iw at each evaluation; ASHA stops the worse trials early. The best values go to "
                                   "<sweep>.tuned.yaml next to the sweep (take them in with `include:`). "
                                   "See docs/ray.md.")
    p.add_argument("sweep", help="sweep YAML file, e.g. sweeps/demo.yaml")
    p.add_argument("--size", required=True, help="the size to tune, e.g. S")
    p.add_argument("--search", action="append", default=[], metavar="NAME=KIND(VALUES)",
                   help="a searched parameter, repeatable: lr=log(1e-4,3e-3), warmup=int(0,200), "
                        "weight_decay=choice(0,0.01,0.1), any dotted key; kinds: log uniform int logint choice grid")
    p.add_argument("--samples", type=int, default=16, help="trials to run (with grid: repeats of the grid)")
    p.add_argument("--steps", type=int, default=None, help="steps per trial (default: the size's budget)")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate (and report to ASHA) every N steps")
    p.add_argument("--grace", type=int, default=None, help="ASHA's grace period in steps (default: the first eval)")
    p.add_argument("--reduction", type=float, default=3, help="ASHA's reduction factor (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random search (default 0)")
    p.add_argument("--concurrent", type=int, default=None,
                   help="at most N trials at once (default: as resources allow)")
    p.add_argument("--retries", type=int, default=1, help="restarts of a failed trial, from its checkpoint (default 1)")
    p.add_argument("--address", default=None, help="Ray cluster (default: launch.ray_address, RAY_ADDRESS, else local)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--name", default=None, help="name of the tune (default: <sweep>-<size>-tune-<time>)")
    p.set_defaults(func=cmd_tune)


COMMANDS: list[Callable] = [_add_plan, _add_spec_doc, _add_run, _add_status, _add_export, _add_tune]
"""Parser builders, one per subcommand, in the order `--help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaling",
        description="Plan, run and track size sweeps of diffusion models, fit scaling laws, predict the largest model.",
    )
    parser.add_argument("--version", action="version", version=f"scaling {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ScalingError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
