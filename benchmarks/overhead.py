"""Tracker + evaluation overhead: the real job vs a bare torch loop training the same model the same way.

For each size of the sweep (default sweeps/demo.yaml, read at run time so it follows the demo), two fresh
processes with the sweep's thread count (`train.threads`, also as OMP/MKL_NUM_THREADS, as the local launcher
sets them) run one after the other:

(a) bare: `bare_loop` -- the same model (`build_model`, seeded as the trainer seeds it), data stream, AdamW,
    learning-rate schedule (`scaling.train.lr_at`), λ/ε generator, gradient clipping, batch and steps as the
    built-in trainer, and nothing else (no evaluation, checkpoint, logging or tracker);
(b) job: the real job as the demo's backend (`local`) runs it. This process (the launcher) opens the job's
    MLflow run in a sqlite store (created beforehand, as a sweep does once), the fresh process runs
    `JobRunner(spec, job, relay=PATH)()` (logging every `log_every` steps, evaluation every `eval_every`
    steps, checkpoints, all written to the relay file), then this process sends the relay file to the run
    and ends it (`scaling.track.relay`). `--tracking direct` measures instead the path of SLURM and Ray
    jobs: the job's process imports mlflow and logs to the store itself.

Both are timed inside their process after the imports they share (torch, scaling). The job's time is the
child's plus the launcher's time for that job (opening the run; sending the relay file and ending the run,
done here after the job: in `scaling run` it overlaps with it) plus its share of the launcher's one-off
import of mlflow and opening of the store (measured in a fresh process, divided by the sweep's number of
jobs). Overhead = (b - a) / a, wall time (and CPU time of all threads). It is split with the job's own
timings (`perf/*_s`) into evaluation, checkpoints, tracking (b's time outside the trainer's set-up, loop,
evaluations and checkpoints: the launcher's part, relay writes or `log()` calls, result.json; with
`direct`, importing mlflow, opening and finishing the run) and set-up + loop (the trainer's set-up and
steps minus (a): the held-out set and evaluator, plus timing noise). Both runs compute the same losses
(checked: `same_loss`).

    PYTHONPATH=$PWD python -m benchmarks.overhead                # every size of the demo, its full budget
    PYTHONPATH=$PWD python -m benchmarks.overhead --sizes S --repeat 3
    PYTHONPATH=$PWD python -m benchmarks.overhead --tracking direct   # jobs that log to MLflow themselves
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "sweeps" / "demo.yaml"


def threads_of(spec, job) -> int:
    """The torch threads of a job, as `JobRunner` sets them."""
    return spec.train.threads or job.resources.cpus or 1


def bare_loop(spec, job):
    """Train `job` as the built-in trainer does (same seeds, so the same losses on CPU) with nothing else.

    Returns (model, per-step losses, set-up seconds, loop seconds)."""
    import torch

    from scaling.data import TrainStream
    from scaling.diffusion import training_loss
    from scaling.models import build_model
    from scaling.train import lr_at

    torch.set_num_threads(threads_of(spec, job))
    t0 = time.perf_counter()
    torch.manual_seed(job.seed)
    model = build_model(spec.model.sizes[job.size], spec.model, spec.data.image_size, spec.data.channels)
    opt = spec.train.optimizer
    optim = torch.optim.AdamW(model.parameters(), lr=job.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay)
    generator = torch.Generator().manual_seed(job.seed)
    stream = TrainStream(spec.data, job.batch_size)
    conditional = spec.model.num_classes > 0
    model.train()
    t1 = time.perf_counter()
    losses = []
    for step in range(job.steps):
        lr = lr_at(step, job.steps, job.lr, spec.train.schedule)
        for group in optim.param_groups:
            group["lr"] = lr
        x, y = next(stream)
        loss = training_loss(model, x, y if conditional else None, generator, spec.diffusion)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        losses.append(loss.item())
        if opt.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
        optim.step()
    return model, losses, t1 - t0, time.perf_counter() - t1


def last_window(losses: list[float], log_every: int) -> float:
    """The mean loss the trainer logs last: over the steps since its previous log."""
    n = len(losses) % log_every or log_every
    return sum(losses[-n:]) / n


def _child(mode: str, job_file: str, out_file: str) -> None:
    """One measurement in this (fresh) process; writes its figures as JSON."""
    with open(job_file, "rb") as f:
        spec, job, relay = pickle.load(f)
    if mode == "launcher":  # the launcher's one-off: importing mlflow and opening the store
        w0, c0 = time.perf_counter(), time.process_time()
        from scaling.track import Tracker

        Tracker(spec.tracking.uri, spec.experiment).summaries()
        Path(out_file).write_text(json.dumps({"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}))
        return
    import scaling.train.loop  # noqa: F401  (imported by both: torch, data, models, diffusion, evaluate)

    w0, c0 = time.perf_counter(), time.process_time()
    if mode == "bare":
        _, losses, setup, loop = bare_loop(spec, job)
        out = {"setup_s": setup, "train_s": loop, "loss": last_window(losses, spec.train.log_every)}
    else:
        from scaling.train import JobRunner

        result = JobRunner(spec, job, relay=relay)()
        m = result.metrics
        out = {"setup_s": m["perf/setup_s"], "train_s": m["perf/train_s"], "eval_s": m["perf/eval_s"],
               "checkpoint_s": m["perf/checkpoint_s"], "loss": m["train/loss"], "status": result.status,
               "mlflow_imported": "mlflow" in sys.modules}
    out |= {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}
    Path(out_file).write_text(json.dumps(out))


def _job(spec, job, folder: Path, tracking: str) -> dict:
    """(b): the job as the local launcher runs it (`relay`), or logging to MLflow itself (`direct`)."""
    if tracking == "direct":
        return _spawn("job", spec, job, folder) | {"launcher_s": 0.0, "launcher_cpu_s": 0.0}
    from scaling.track import Tracker, job_params, job_tags
    from scaling.track.relay import RELAY_FILE, Relay

    path = Path(job.workdir) / RELAY_FILE
    tracker = Tracker(spec.tracking.uri, spec.experiment)
    w0, c0 = time.perf_counter(), time.process_time()
    runlog = tracker.open_run(job.run_id, tags=job_tags(spec, job), params=job_params(spec, job))
    relay = Relay(path, runlog, attempt=runlog.attempt)
    opened = time.perf_counter() - w0
    out = _spawn("job", spec, job, folder, relay=str(path))
    w1 = time.perf_counter()
    relay.close("FAILED", "the job ended without its end record")
    closed = time.perf_counter() - w1
    return out | {"launcher_s": opened + closed, "launcher_cpu_s": time.process_time() - c0}


def _spawn(mode: str, spec, job, folder: Path, relay: str | None = None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    name = job.size if job else "sweep"
    job_file, out_file = folder / f"{name}-{mode}.pkl", folder / f"{name}-{mode}.json"
    job_file.write_bytes(pickle.dumps((spec, job, relay)))
    threads = str(threads_of(spec, job) if job else 1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    done = subprocess.run([sys.executable, "-m", "benchmarks.overhead", "--child", mode, str(job_file), str(out_file)],
                          cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode:
        what = job.run_id if job else spec.name
        raise RuntimeError(f"{mode} run of {what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(out_file.read_text())


@dataclass(frozen=True)
class SizeOverhead:
    """Figures of one size (medians over repeats)."""

    size: str
    params: int
    steps: int
    bare_wall: float
    bare_cpu: float
    job_wall: float
    job_cpu: float
    launcher_s: float
    """The launcher's wall time for this job: opening its run, sending its relay file, ending the run, and its
    share of the one-off import of mlflow and opening of the store (0 with `direct`: the job does it all)."""
    setup_s: float
    train_s: float
    eval_s: float
    checkpoint_s: float
    same_loss: bool
    "The job's last logged training loss equals the bare loop's (the same training)."
    runs: tuple[tuple[float, float, float], ...] = ()
    """Per repeat, the pair run one after the other: (bare wall, job wall, job set-up + steps), seconds."""

    @property
    def overhead(self) -> float:
        return (self.job_wall - self.bare_wall) / self.bare_wall

    @property
    def cpu_overhead(self) -> float:
        return (self.job_cpu - self.bare_cpu) / self.bare_cpu

    @property
    def tracking_s(self) -> float:
        return self.job_wall - self.setup_s - self.train_s - self.eval_s - self.checkpoint_s

    @property
    def loop_s(self) -> float:
        """The trainer's set-up + steps minus the whole bare run."""
        return self.setup_s + self.train_s - self.bare_wall

    @property
    def per_repeat(self) -> list[float]:
        """The overhead of each repeat's pair alone."""
        return [(job - bare) / bare for bare, job, _ in self.runs]

    @property
    def loop_per_repeat(self) -> list[float]:
        """The set-up + loop difference of each repeat's pair, over its bare time: the same training timed in
        two processes, so its spread is the timing noise of one pair."""
        return [(loop - bare) / bare for bare, _, loop in self.runs]


def measure(sweep: str | Path = DEMO, overrides: dict | None = None, sizes: list[str] | None = None,
            repeat: int = 1, folder: Path | None = None, echo=None, tracking: str = "relay") -> list[SizeOverhead]:
    """Run (a) and (b) for each size, `repeat` times in alternating order; per-size medians."""
    if tracking not in ("relay", "direct"):
        raise ValueError(f"tracking must be relay or direct, not {tracking!r}")
    from scaling.plan import plan
    from scaling.spec import load_sweep
    from scaling.track import ensure_store

    folder = Path(folder or tempfile.mkdtemp(prefix="scaling-overhead-"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    ensure_store(uri)  # a sweep creates its store once, before its jobs
    name = load_sweep(sweep, overrides).name
    specs = [load_sweep(sweep, _merge(overrides or {}, {  # per repeat a fresh workdir and experiment: a job
        "launch": {"workdir": str(folder / f"r{k}")},       # must not find itself finished
        "tracking": {"uri": uri, "experiment": f"{name}-r{k}"}})) for k in range(repeat)]
    first = specs[0]
    wanted = sizes or list(first.model.sizes)
    share = {"wall_s": 0.0, "cpu_s": 0.0}
    if tracking == "relay":  # the launcher's one-off, per job of the sweep
        once = _spawn("launcher", first, None, folder / "launcher")
        share = {k: once[k] / len(plan(first)) for k in share}
        if echo:
            echo(f"  launcher: importing mlflow and opening the store {once['wall_s']:.2f} s once, "
                 f"{share['wall_s']:.2f} s per job of {len(plan(first))}")
    figures = []
    for size in wanted:
        runs: dict[str, list[dict]] = {"bare": [], "job": []}
        for k, spec in enumerate(specs):
            job = next(j for j in plan(spec) if j.size == size and j.seed == spec.seeds_for(size)[0]
                       and j.budget == spec.train.budget[0])
            for mode in (("bare", "job") if k % 2 == 0 else ("job", "bare")):
                where = folder / f"r{k}" / "overhead"
                if mode == "bare":
                    runs[mode].append(_spawn(mode, spec, job, where))
                    continue
                r = _job(spec, job, where, tracking)
                if tracking == "relay" and r["mlflow_imported"]:
                    raise RuntimeError(f"the relayed job {job.run_id} imported mlflow")
                runs[mode].append(r | {"launcher_s": r["launcher_s"] + share["wall_s"],
                                       "wall_s": r["wall_s"] + r["launcher_s"] + share["wall_s"],
                                       "cpu_s": r["cpu_s"] + r["launcher_cpu_s"] + share["cpu_s"]})
        med = {mode: {key: statistics.median(r[key] for r in rs) for key in rs[0]
                      if key not in ("status", "mlflow_imported")} for mode, rs in runs.items()}
        b, j = med["bare"], med["job"]
        fig = SizeOverhead(size, job.params, job.steps, b["wall_s"], b["cpu_s"], j["wall_s"], j["cpu_s"],
                           j["launcher_s"], j["setup_s"], j["train_s"], j["eval_s"], j["checkpoint_s"],
                           all(x["loss"] == y["loss"] for x, y in zip(runs["bare"], runs["job"])),
                           tuple((x["wall_s"], y["wall_s"], y["setup_s"] + y["train_s"])
                                 for x, y in zip(runs["bare"], runs["job"])))
        figures.append(fig)
        if echo:
            echo(f"  {size}: bare {fig.bare_wall:.1f} s, job {fig.job_wall:.1f} s, overhead {fig.overhead:+.1%}"
                 f"{'' if fig.same_loss else ' (LOSSES DIFFER)'}")
    return figures


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def total(figures: list[SizeOverhead]) -> SizeOverhead:
    """All sizes together (sums), as one `SizeOverhead` named 'all'."""
    def s(attr: str) -> float:
        return sum(getattr(f, attr) for f in figures)

    return SizeOverhead("all", int(s("params")), int(s("steps")), s("bare_wall"), s("bare_cpu"), s("job_wall"),
                        s("job_cpu"), s("launcher_s"), s("setup_s"), s("train_s"), s("eval_s"), s("checkpoint_s"),
                        all(f.same_loss for f in figures),
                        tuple(tuple(map(sum, zip(*pairs))) for pairs in zip(*(f.runs for f in figures))))


def loop_spread(figures: list[SizeOverhead]) -> float:
    """The standard deviation of the set-up + loop difference of single pairs, pooled over the sizes (each
    about its size's mean): how much the same training's time differs between two processes. NaN with one
    repeat."""
    deviations = []
    for f in figures:
        values = f.loop_per_repeat
        deviations += [v - statistics.fmean(values) for v in values] if len(values) > 1 else []
    dof = sum(len(f.runs) - 1 for f in figures if len(f.runs) > 1)
    return (sum(d * d for d in deviations) / dof) ** 0.5 if dof else float("nan")


def table_lines(figures: list[SizeOverhead]) -> list[str]:
    head = ["size", "params", "steps", "bare s", "job s", "overhead", "CPU ovh.", "eval", "ckpt", "tracking",
            "set-up+loop", "launcher s", "same loss"]
    rows = []
    for f in [*figures, total(figures)] if len(figures) > 1 else figures:
        a = f.bare_wall
        rows.append([f.size, f"{f.params:,}", str(f.steps), f"{a:.1f}", f"{f.job_wall:.1f}", f"{f.overhead:+.1%}",
                     f"{f.cpu_overhead:+.1%}", f"{f.eval_s / a:.1%}", f"{f.checkpoint_s / a:.2%}",
                     f"{f.tracking_s / a:.1%}", f"{f.loop_s / a:+.1%}", f"{f.launcher_s:.2f}",
                     "yes" if f.same_loss else "NO"])
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]
    return ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) for cells in [head, *rows]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=3, metavar=("MODE", "JOB", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--sweep", default=str(DEMO))
    p.add_argument("--sizes", default=None, help="comma-separated sizes (default: all of the sweep)")
    p.add_argument("--repeat", type=int, default=1, help="runs of (a) and (b) per size, in alternating order")
    p.add_argument("--tracking", choices=("relay", "direct"), default="relay",
                   help="relay: as the local backend runs jobs (default); direct: as SLURM and Ray jobs log")
    args = p.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    figures = measure(args.sweep, sizes=args.sizes.split(",") if args.sizes else None, repeat=args.repeat,
                      echo=print, tracking=args.tracking)
    print("\n".join(table_lines(figures)))
    print("overhead = (job - bare) / bare wall time; eval, ckpt, tracking, set-up+loop: its parts, over bare")
    if args.repeat > 1:
        print(f"per repeat, all sizes: {', '.join(f'{v:+.1%}' for v in total(figures).per_repeat)}; set-up + loop "
              f"of one pair varies by {loop_spread(figures):.1%} (std): the same training timed in two processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
