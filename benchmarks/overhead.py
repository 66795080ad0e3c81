"""Tracker + evaluation overhead: the real job vs a bare torch loop training the same model the same way.

For each size of the sweep (default sweeps/demo.yaml, read at run time so it follows the demo), two fresh
processes with the sweep's thread count (`train.threads`, also as OMP/MKL_NUM_THREADS, as the local launcher
sets them) run one after the other:

(a) bare: `bare_loop` -- the same model (`build_model`, seeded as the trainer seeds it), data stream, AdamW,
    learning-rate schedule (`scaling.train.lr_at`), λ/ε generator, gradient clipping, batch and steps as the
    built-in trainer, and nothing else (no evaluation, checkpoint, logging or tracker);
(b) job: `JobRunner(spec, job)()` -- the real job: MLflow run in a sqlite store (created beforehand, as a sweep
    does once), logging every `log_every` steps, evaluation every `eval_every` steps, checkpoints.

Both are timed inside their process after the imports they share (torch, scaling); (b) includes importing
the tracker (mlflow). Overhead = (b - a) / a, wall time (and CPU time of all threads). It is split with the
job's own timings (`perf/*_s`) into evaluation, checkpoints, tracking (b's time outside the trainer's set-up,
loop, evaluations and checkpoints: importing mlflow, opening and finishing the run, `log()` calls, the final
flush, result.json) and set-up + loop (the trainer's set-up and steps minus (a): the held-out set and
evaluator, plus timing noise). Both runs compute the same losses (checked: `same_loss`).

    PYTHONPATH=$PWD python -m benchmarks.overhead                # every size of the demo, its full budget
    PYTHONPATH=$PWD python -m benchmarks.overhead --sizes S --repeat 3
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
        spec, job = pickle.load(f)
    import scaling.train.loop  # noqa: F401  (imported by both: torch, data, models, diffusion, evaluate)

    w0, c0 = time.perf_counter(), time.process_time()
    if mode == "bare":
        _, losses, setup, loop = bare_loop(spec, job)
        out = {"setup_s": setup, "train_s": loop, "loss": last_window(losses, spec.train.log_every)}
    else:
        import mlflow  # noqa: F401  (the tracker imports it lazily: part of each job's cost, timed apart)
        from mlflow import MlflowClient  # noqa: F401

        from scaling.train import JobRunner

        imported = time.perf_counter() - w0
        result = JobRunner(spec, job)()
        m = result.metrics
        out = {"import_s": imported, "setup_s": m["perf/setup_s"], "train_s": m["perf/train_s"],
               "eval_s": m["perf/eval_s"], "checkpoint_s": m["perf/checkpoint_s"], "loss": m["train/loss"],
               "status": result.status}
    out |= {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}
    Path(out_file).write_text(json.dumps(out))


def _spawn(mode: str, spec, job, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    job_file, out_file = folder / f"{job.size}-{mode}.pkl", folder / f"{job.size}-{mode}.json"
    job_file.write_bytes(pickle.dumps((spec, job)))
    threads = str(threads_of(spec, job))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    done = subprocess.run([sys.executable, "-m", "benchmarks.overhead", "--child", mode, str(job_file), str(out_file)],
                          cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{mode} run of {job.run_id} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
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
    import_s: float
    "Importing the tracker (mlflow) in the job's process."
    setup_s: float
    train_s: float
    eval_s: float
    checkpoint_s: float
    same_loss: bool
    "The job's last logged training loss equals the bare loop's (the same training)."

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


def measure(sweep: str | Path = DEMO, overrides: dict | None = None, sizes: list[str] | None = None,
            repeat: int = 1, folder: Path | None = None, echo=None) -> list[SizeOverhead]:
    """Run (a) and (b) for each size, `repeat` times in alternating order; per-size medians."""
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
    figures = []
    for size in wanted:
        runs: dict[str, list[dict]] = {"bare": [], "job": []}
        for k, spec in enumerate(specs):
            job = next(j for j in plan(spec) if j.size == size and j.seed == spec.train.seeds[0]
                       and j.budget == spec.train.budget[0])
            for mode in (("bare", "job") if k % 2 == 0 else ("job", "bare")):
                runs[mode].append(_spawn(mode, spec, job, folder / f"r{k}" / "overhead"))
        med = {mode: {key: statistics.median(r[key] for r in rs) for key in rs[0] if key != "status"}
               for mode, rs in runs.items()}
        b, j = med["bare"], med["job"]
        fig = SizeOverhead(size, job.params, job.steps, b["wall_s"], b["cpu_s"], j["wall_s"], j["cpu_s"],
                           j["import_s"], j["setup_s"], j["train_s"], j["eval_s"], j["checkpoint_s"],
                           all(x["loss"] == y["loss"] for x, y in zip(runs["bare"], runs["job"])))
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
                        s("job_cpu"), s("import_s"), s("setup_s"), s("train_s"), s("eval_s"), s("checkpoint_s"),
                        all(f.same_loss for f in figures))


def table_lines(figures: list[SizeOverhead]) -> list[str]:
    head = ["size", "params", "steps", "bare s", "job s", "overhead", "CPU ovh.", "eval", "ckpt", "tracking",
            "set-up+loop", "mlflow import s", "same loss"]
    rows = []
    for f in [*figures, total(figures)] if len(figures) > 1 else figures:
        a = f.bare_wall
        rows.append([f.size, f"{f.params:,}", str(f.steps), f"{a:.1f}", f"{f.job_wall:.1f}", f"{f.overhead:+.1%}",
                     f"{f.cpu_overhead:+.1%}", f"{f.eval_s / a:.1%}", f"{f.checkpoint_s / a:.2%}",
                     f"{f.tracking_s / a:.1%}", f"{f.loop_s / a:+.1%}", f"{f.import_s:.1f}",
                     "yes" if f.same_loss else "NO"])
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]
    return ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) for cells in [head, *rows]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=3, metavar=("MODE", "JOB", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--sweep", default=str(DEMO))
    p.add_argument("--sizes", default=None, help="comma-separated sizes (default: all of the sweep)")
    p.add_argument("--repeat", type=int, default=1, help="runs of (a) and (b) per size, in alternating order")
    args = p.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    figures = measure(args.sweep, sizes=args.sizes.split(",") if args.sizes else None, repeat=args.repeat,
                      echo=print)
    print("\n".join(table_lines(figures)))
    print("overhead = (job - bare) / bare wall time; eval, ckpt, tracking, set-up+loop: its parts, over bare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
