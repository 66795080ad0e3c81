"""Training speed of each size of a sweep on this machine, with the built-in trainer.

    PYTHONPATH=. python benchmarks/train.py                       # the demo sweep, its full step budget
    PYTHONPATH=. python benchmarks/train.py --steps 100 --sizes S,M  # shorter; overheads projected

For each size it runs the real job (`JobRunner(spec, job, track=False)`: model, data, AdamW, evaluations
and checkpoints at the sweep's intervals) in this process, one size after another, and prints: parameters,
training samples/s, achieved FLOP/s (the planner's FLOP count / training time), seconds per evaluation and
per checkpoint, and their share of the job's wall time (target: under 3% at the sweep's intervals). With
`--steps` shorter than the budget, the shares are also projected to the full budget from the measured
per-step, per-evaluation and per-checkpoint times. MLflow is not involved (its logging is off-thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling.evaluate import lambda_grid  # noqa: E402
from scaling.plan import plan  # noqa: E402
from scaling.spec import load_sweep  # noqa: E402
from scaling.train import JobRunner  # noqa: E402


def _count(steps: int, every: int, final: bool) -> int:
    """How many times an action with interval `every` runs in `steps` steps (plus once at the end)."""
    n = steps // every
    return n + (1 if final and steps % every else 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default="sweeps/demo.yaml")
    p.add_argument("--sizes", default=None, help="comma-separated sizes (default: all)")
    p.add_argument("--steps", type=int, default=None, help="steps per size (default: the sweep's budget)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the sweep's train.threads)")
    args = p.parse_args(argv)

    overrides = {"train": {"threads": args.threads}} if args.threads else None
    with tempfile.TemporaryDirectory() as tmp:
        overrides = (overrides or {}) | {"launch": {"workdir": tmp}}
        spec = load_sweep(args.sweep, overrides)
        tr = spec.train
        jobs = [j for j in plan(spec) if j.seed == spec.seeds_for(j.size)[0] and j.budget == tr.budget[0]]
        if args.sizes:
            wanted = args.sizes.split(",")
            jobs = [j for j in jobs if j.size in wanted]
        levels = len(lambda_grid(spec.evaluation))
        print(f"sweep {spec.name}: batch {tr.batch_size}, eval every {tr.eval_every} "
              f"({spec.evaluation.samples} images x {levels} levels), checkpoint every {tr.ckpt_every}, "
              f"threads {tr.threads}")
        head = ["size", "params", "steps", "samples/s", "GFLOP/s", "s/eval", "s/ckpt", "setup s", "wall s", "CPU s",
                "eval %", "ckpt %", "proj. eval %", "proj. ckpt %"]
        rows, cpu_full = [], []
        for full in jobs:
            job = dataclasses.replace(full, steps=args.steps or full.steps)
            t, c = time.perf_counter(), time.process_time()
            result = JobRunner(spec, job, track=False)()
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            m = result.metrics
            evals = _count(job.steps, tr.eval_every, True)
            ckpts = _count(job.steps, tr.ckpt_every, True)  # the last one is the final checkpoint
            per_step = m["perf/train_s"] / job.steps
            per_eval = m["perf/eval_s"] / evals
            per_ckpt = m["perf/checkpoint_s"] / ckpts
            full_evals, full_ckpts = _count(full.steps, tr.eval_every, True), _count(full.steps, tr.ckpt_every, True)
            full_wall = m["perf/setup_s"] + full.steps * per_step + full_evals * per_eval + full_ckpts * per_ckpt
            cpu_full.append(cpu * full_wall / wall)
            rows.append([
                job.size, f"{job.params:,}", str(job.steps), f"{job.batch_size / per_step:.0f}",
                f"{job.flops_per_step / per_step / 1e9:.1f}", f"{per_eval:.2f}", f"{per_ckpt:.3f}",
                f"{m['perf/setup_s']:.1f}", f"{wall:.1f}", f"{cpu:.1f}", f"{100 * m['perf/eval_s'] / wall:.1f}",
                f"{100 * m['perf/checkpoint_s'] / wall:.2f}", f"{100 * full_evals * per_eval / full_wall:.1f}",
                f"{100 * full_ckpts * per_ckpt / full_wall:.2f}",
            ])
            primary = m.get(f"eval/iw/{spec.evaluation.primary}", float("nan"))
            print(f"  {job.size}: done in {wall:.1f} s, L_iw {primary:.4f}", flush=True)
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]
    for cells in [head, *rows]:
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    print("proj.: shares at the sweep's full budget, from the measured per-step/eval/checkpoint times")
    lanes = [0.0] * spec.launch.max_parallel  # the local launcher starts jobs in plan order as slots free up
    for seconds in cpu_full:
        lanes[lanes.index(min(lanes))] += seconds
    print(f"CPU seconds at the full budget: {sum(cpu_full):.0f} in all; with {len(lanes)} jobs at once on an idle "
          f"machine the training takes about {max(lanes):.0f} s (wall figures above include other load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
