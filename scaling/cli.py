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
            "seed": job.seed, "steps": job.steps, "batch_size": job.batch_size,
            "micro_batch_size": job.micro_batch_size, "lr": job.lr,
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
    micro = any(job.micro_batch_size for job in jobs)
    if micro:
        head.insert(4, "micro-batch")
    table = []
    for row, job in zip(rows, jobs):
        r = job.resources
        res = f"{r.nodes}x{r.gpus}gpu {r.cpus}cpu {r.mem_gb:g}G {r.time_min}min"
        res += f" {r.partition}" if r.partition else ""
        cells = [row["run_id"], row["size"], f"{job.params:,}", str(job.steps), _si(job.flops_per_step),
                 _si(job.total_flops), f"{job.lr:.3g}", res]
        if args.device_tflops:
            cells.insert(6, f"{row['gpu_hours']:.1f}")
        if micro:
            cells.insert(4, str(job.micro_batch_size or "-"))
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


def one_line(error: Exception) -> str:
    """An error's message on one line (messages of pandas, pyarrow or YAML may span several)."""
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _then(argv: list[str]) -> int:
    """Run another subcommand (fit, report) as part of `scaling run`: its error is printed, not raised."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ScalingError as e:
        print(f"{argv[0]}: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    from scaling.launch.progress import summary_lines
    from scaling.launch.sweep import run_sweep

    spec = _load(args)
    outcome = run_sweep(spec, backend=args.backend, progress=_printer())
    print("\n".join(summary_lines(outcome.statuses, outcome.results)))
    if outcome.table is None:
        return 1
    print(f"table: {outcome.table}")
    failed = not outcome.ok
    if not args.no_fit:
        failed |= bool(_then(["fit", args.sweep, "--table", str(outcome.table)]))
        failed |= bool(_then(["report", args.sweep, "--table", str(outcome.table)]))
    return 1 if failed else 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="train every job of a sweep, export the table, then fit and report",
                       description="Plan, launch (finished jobs are skipped, unfinished ones resume from their "
                                   "checkpoints), wait with a progress display, export runs/<sweep>/table.csv, "
                                   "then `scaling fit` and `scaling report` on it. Exit status 1 if a job did not "
                                   "finish or the fit or report failed.")
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

    spec = _load(args)
    if args.backend in (None, "slurm"):
        from scaling.launch import slurm_commands

        if args.backend == "slurm" or slurm_commands.submitted(spec):  # SLURM sweeps: SLURM's state and job id too
            print("\n".join(slurm_commands.status_lines(sweep_status(spec, backend="slurm"))))
            return 0
    print("\n".join(status_lines(sweep_status(spec, backend=args.backend))))
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

# --- submit / resubmit / cancel (SLURM) --------------------------------------------------------------

def cmd_submit(args: argparse.Namespace) -> int:
    from scaling.launch import slurm_commands

    if args.dry_run:
        print("\n".join(slurm_commands.dry_run(args.sweep, args.cluster)))
        return 0
    lines, code = slurm_commands.submit(args.sweep, args.cluster, wait=args.wait, timeout_min=args.timeout_min)
    print("\n".join(lines))
    return code


def _add_submit(sub) -> None:
    p = sub.add_parser("submit", help="send a sweep's jobs to SLURM as job arrays (through submitit)",
                       description="Submit every unfinished job of a sweep to SLURM, one job array per resource "
                                   "shape; job ids go to <workdir>/<sweep>/slurm_jobs.json. See docs/slurm.md.")
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--cluster", metavar="NAME", help="cluster profile slurm/NAME.yaml (overrides launch.cluster)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch scripts; submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for the jobs and print their results")
    p.add_argument("--timeout-min", type=float, default=None, metavar="MIN",
                   help="with --wait: give up waiting after MIN minutes (the jobs keep running)")
    p.set_defaults(func=cmd_submit)


def cmd_resubmit(args: argparse.Namespace) -> int:
    from scaling.launch import slurm_commands

    lines, code = slurm_commands.submit(args.sweep, args.cluster, failed_only=args.failed)
    print("\n".join(lines))
    return code


def _add_resubmit(sub) -> None:
    p = sub.add_parser("resubmit", help="submit a SLURM sweep's failed, cancelled or unfinished jobs again",
                       description="Submit again the jobs whose SLURM job failed, was cancelled, timed out or "
                                   "vanished (and, without --failed, those never submitted); they resume from "
                                   "their checkpoints in the same MLflow runs.")
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--failed", action="store_true", help="only jobs whose last SLURM job ended without finishing")
    p.add_argument("--cluster", metavar="NAME", help="cluster profile slurm/NAME.yaml (overrides launch.cluster)")
    p.set_defaults(func=cmd_resubmit)


def cmd_cancel(args: argparse.Namespace) -> int:
    from scaling.launch import slurm_commands

    print("\n".join(slurm_commands.cancel(args.sweep, args.cluster)))
    return 0


def _add_cancel(sub) -> None:
    p = sub.add_parser("cancel", help="cancel a SLURM sweep's queued and running jobs (scancel)",
                       description="scancel every job of the sweep recorded in slurm_jobs.json; checkpoints stay.")
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--cluster", metavar="NAME", help="cluster profile slurm/NAME.yaml (overrides launch.cluster)")
    p.set_defaults(func=cmd_cancel)


# --- report -----------------------------------------------------------------------------------------

def cmd_report(args: argparse.Namespace) -> int:
    from scaling.report import report_from_files

    result = report_from_files(args.sweep, args.table, args.fits, args.out, metric=args.metric,
                               size_col=args.size_col, params_col=args.params_col, step_col=args.step_col,
                               mlflow_uri=args.mlflow_uri, progress=args.progress)
    print(f"report: {result.out / 'index.html'} ({len(result.figures)} figures; also report.md, figures/*.png|svg)")
    for line in result.status:
        print(f"partial sweep: {line}")
    for line in result.problems:
        print(f"note: {line}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="draw the figures and write the HTML/Markdown report of a sweep",
                       description="Write reports/<sweep>/index.html (self-contained), report.md and each figure "
                                   "as PNG and SVG from the exported table and the fit results. Never refits.")
    p.add_argument("sweep", nargs="?", help="sweep YAML file: reads runs/<sweep>/table.csv and fits/<sweep>/")
    p.add_argument("--table", help="tidy table CSV (default: runs/<sweep>/table.csv)")
    p.add_argument("--fits", "--fit", action="append", metavar="PATH",
                   help="fit result file or folder of them (repeatable; default: fits/<sweep>/)")
    p.add_argument("--out", help="report folder (default: reports/<sweep>)")
    p.add_argument("--metric", help="loss column to draw (default: the sweep's fit metric, else eval/iw/laplace)")
    p.add_argument("--size-col", help="column holding the size name, for tables from elsewhere")
    p.add_argument("--params-col", help="column holding the parameter count, for tables from elsewhere")
    p.add_argument("--step-col", help="column holding the training step, for tables from elsewhere")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI shown in the footer and used for run links")
    p.add_argument("--progress", choices=("step", "samples", "flops"),
                   help="x axis of the loss-vs-progress figure (default: what the curve fits used, else step)")
    p.set_defaults(func=cmd_report)


# --- fit --------------------------------------------------------------------------------------------

def _csv(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for arg in values or () for v in arg.split(",") if v.strip())


def cmd_fit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scaling.errors import FitError
    from scaling.fit import FitOptions, FitPlan, Target, fit_table, load_table
    from scaling.fit.partial import predict_final_from_partial, write_partial
    from scaling.fit.result import fit_filename
    from scaling.fit.table import Columns, normalized
    from scaling.fit.text import describe, partial_lines

    cols = Columns(run=args.run_col, size=args.size_col, params=args.params_col, step=args.step_col,
                   status=args.status_col)
    plan_kw: dict = {}
    final_steps: dict[str, float] = {}
    if args.sweep:
        from scaling.plan import plan
        from scaling.spec import load_sweep

        spec = load_sweep(args.sweep)
        table = load_table(args.table or Path(spec.launch.workdir) / spec.name / "table.csv")  # where `run` wrote it
        jobs = {j.size: j for j in plan(spec)}
        plan_kw = {"name": args.name or spec.name, "laws": spec.fit.laws, "x": spec.fit.x,
                   "holdout": spec.fit.holdout, "primary": spec.metric}
        plan_kw["targets"] = tuple(  # predicted when the size has no finished run in the table
            Target(s, {"params": float(j.params), "step": float(j.steps), "samples": float(j.steps * j.batch_size),
                       "flops": float(j.total_flops)})
            for s, j in jobs.items() if s in spec.fit.holdout)
        final_steps = {s: float(j.steps) for s, j in jobs.items()}
        bootstrap, loss, delta = spec.fit.bootstrap, spec.fit.loss, spec.fit.delta
    elif args.table:
        table = load_table(args.table)
        if not args.name:
            raise FitError("--name is needed with --table (results go to fits/<name>/)")
        plan_kw = {"name": args.name}
        bootstrap, loss, delta = 1000, FitOptions.loss, FitOptions.delta
    else:
        raise FitError("give a sweep YAML (reads runs/<sweep>/table.csv) or --table CSV --name NAME")
    for key, value in (("laws", _csv(args.law)), ("metrics", _csv(args.metric)), ("x", args.x_col),
                       ("x2", args.x2_col), ("holdout", _csv(args.holdout) or None)):
        if value:
            plan_kw[key] = value
    if args.metric:
        plan_kw["primary"] = plan_kw["metrics"][0]
    loss, delta = args.loss or loss, delta if args.delta is None else args.delta
    if not delta > 0:
        raise FitError(f"--delta must be a positive Huber delta, got {delta}")
    opts = FitOptions(loss=loss, delta=delta, level=args.level, seed=args.seed, workers=args.workers,
                      bootstrap=bootstrap if args.bootstrap is None else args.bootstrap,
                      loso_bootstrap=min(200, bootstrap if args.bootstrap is None else args.bootstrap))
    fplan = FitPlan(**plan_kw, curves=not args.no_curves, include_unfinished=args.include_unfinished, cols=cols,
                    opts=opts)
    outcome = fit_table(table, fplan, args.out)
    for path, res in outcome.results:
        print("\n".join(describe(res)))
        print(f"  -> {path}")
    for fname, err in outcome.errors:
        print(f"not fitted: {fname}: {err}")
    # A held-out size still running: predict its final loss from its partial curve.
    t = normalized(table, cols)
    primary = fplan.primary or (outcome.results[0][1].metric if outcome.results else None)
    for size in fplan.holdout or ():
        running = t[(t["_size"] == size) & (t["_status"] != "FINISHED")]
        final = args.final_step or final_steps.get(size)
        if running.empty or not final or primary is None:
            continue
        x2 = fplan.x2 or cols.step
        rows = predict_final_from_partial(table, size, primary, final, x_cols=(fplan.x, x2), cols=cols,
                                          opts=FitOptions(bootstrap=min(opts.bootstrap, 200), loss=loss,
                                                          delta=delta, level=args.level, seed=args.seed))
        path = write_partial(Path(args.out) / fplan.name / fit_filename(primary, "chinchilla", f"partial-{size}"),
                             rows, metric=primary, law="chinchilla", size=size, final_step=final)
        print("\n".join(partial_lines(rows, size, final)))
        print(f"  -> {path}")
    return 2 if outcome.errors else 0


def _add_fit(sub) -> None:
    p = sub.add_parser("fit", help="fit scaling laws, predict the held-out size, backtest (fits/<name>/*.json)",
                       description="Fit every law to every eval/iw/* metric over x (default params) on all sizes "
                                   "but the held-out one, predict it with a bootstrap interval, compare with what "
                                   "was measured; fit each size's loss curve over steps. See docs/fitting.md.")
    p.add_argument("sweep", nargs="?", help="sweep YAML: reads <launch.workdir>/<sweep>/table.csv and its fit: block")
    p.add_argument("--table", help="a tidy CSV (from `scaling export` or elsewhere) instead of the sweep's table")
    p.add_argument("--name", help="fit set name: results go to <out>/<name>/ (default: the sweep name)")
    p.add_argument("--out", default="fits", help="results folder (default: fits)")
    p.add_argument("--metric", action="append", help="metric column(s) to fit, comma-separated or repeated "
                   "(default: every eval/iw/* column); the first is the one whose curves are fitted")
    p.add_argument("--law", action="append", help="law(s): power, power_offset, kaplan_ns, chinchilla "
                   "(default: the sweep's fit.laws, else power,power_offset)")
    p.add_argument("--x-col", help="x column of the size law (default: fit.x or params)")
    p.add_argument("--x2-col", help="second input of two-input laws "
                   "(default: samples if present, else the step column)")
    p.add_argument("--holdout", action="append", help="size(s) held out and predicted (default: fit.holdout, "
                   "else the largest size)")
    p.add_argument("--size-col", default="size", help="column naming the size (default: size)")
    p.add_argument("--params-col", default="params", help="column of parameter counts (default: params)")
    p.add_argument("--step-col", default="step", help="column of steps (default: step)")
    p.add_argument("--run-col", default="run_id",
                   help="column of run ids (default: run_id; without it each row is a run)")
    p.add_argument("--status-col", default="status", help="column of run status (default: status)")
    p.add_argument("--include-unfinished", action="store_true",
                   help="use the last value of runs that are not FINISHED too (they are listed either way)")
    p.add_argument("--bootstrap", type=int, default=None,
                   help="bootstrap resamples (default: fit.bootstrap or 1000)")
    p.add_argument("--level", type=float, default=0.95, help="interval confidence level (default: 0.95)")
    p.add_argument("--loss", choices=["huber", "squares"], default=None,
                   help="robust Huber or least squares, on log residuals (default: fit.loss, else huber)")
    p.add_argument("--delta", type=float, default=None,
                   help="Huber delta on log residuals (default: fit.delta, else 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--workers", type=int, default=None,
                   help="fits run at once, one process each (default: one per CPU, at most 4, or "
                   "$SCALING_FIT_PROCESSES); the results are the same for any number")
    p.add_argument("--no-curves", action="store_true", help="skip the loss-over-steps fits")
    p.add_argument("--final-step", type=float, default=None,
                   help="final step of a held-out size that is still running (default: from the sweep's plan)")
    p.set_defaults(func=cmd_fit)


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


COMMANDS: list[Callable] = [_add_plan, _add_spec_doc, _add_run, _add_status, _add_export, _add_submit,
                            _add_resubmit, _add_cancel, _add_fit, _add_report, _add_tune]
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
        print(f"error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
