"""Ray figures: what the `ray` backend and `scaling tune` cost on top of the training itself.

    PYTHONPATH=. python benchmarks/ray_backend.py                 # all three, 2 CPUs
    PYTHONPATH=. python benchmarks/ray_backend.py --jobs 8 --trials 8 --cpus 2

start: a local Ray started and shut down by `ray_session` (and the seconds until no Ray process is left).
backend: --jobs jobs of a trivial own trainer (10 logged steps, one checkpoint) through `RayLauncher`
(submit -> wait) on one Ray, against the same jobs run one after another by `JobRunner` in this process;
the difference per job is the backend's overhead (task start, worker imports on fresh workers, logs).
tune: --trials trials of a trivial objective through `scaling.tune.tune` (ASHA, MLflow parent and child
runs, table, figure, overlay); reported per trial. The MLflow store is created before any timing.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def trivial(ctx) -> None:
    """An own trainer that costs nothing: 10 logged steps, one checkpoint, one L_iw (lowest at lr 3e-3)."""
    start = ctx.resume_state["step"] if ctx.resume_state else 0
    for step in range(start + 1, ctx.job.steps + 1):
        ctx.log(step, {"train/loss": 1.0 / step})
    ctx.save({"step": ctx.job.steps})
    ctx.log(ctx.job.steps, {f"eval/iw/{ctx.spec.evaluation.primary}": 1.0 + math.log10(ctx.job.lr / 3e-3) ** 2})


def _sweep(folder: Path, name: str, jobs: int) -> Path:
    sizes = {f"S{i}": {"depth": 1, "width": 16, "heads": 2, "patch": 4} for i in range(jobs)}
    data = {"name": name, "model": {"sizes": sizes}, "data": {"image_size": 8},
            "train": {"budget": 10, "batch_size": 8, "eval_every": 5, "log_every": 1},
            "trainer": "benchmarks.ray_backend:trivial", "fit": {"holdout": []},
            "launch": {"backend": "ray", "workdir": str(folder / "runs"), "resources": {"default": {"cpus": 1}}},
            "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(REPO))
    from scaling.launch import get_launcher
    from scaling.launch.ray_session import children, ray_session
    from scaling.plan import plan
    from scaling.spec import load_sweep
    from scaling.track import Tracker
    from scaling.train import JobRunner
    from scaling.tune import tune

    folder = Path(tempfile.mkdtemp(prefix="scaling-ray-bench-"))
    Tracker(f"sqlite:///{folder / 'mlflow.db'}", "warm-up")
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load {load:.1f}; Ray gets {args.cpus} CPUs; files in {folder}")

    t = time.perf_counter()
    with ray_session(None, args.cpus):
        up = time.perf_counter() - t
        t = time.perf_counter()
    down = time.perf_counter() - t
    left = [p for p in children(os.getpid()) if p[1] in ("raylet", "gcs_server")]
    print(f"start: local Ray up in {up:.1f} s, shut down in {down:.1f} s, Ray daemons left: {len(left)}")

    spec = load_sweep(_sweep(folder, "inline", args.jobs))
    t = time.perf_counter()
    for job in plan(spec):
        JobRunner(spec, job)()
    inline = time.perf_counter() - t
    spec = load_sweep(_sweep(folder, "onray", args.jobs))
    with ray_session(None, args.cpus):
        t = time.perf_counter()
        launcher = get_launcher(spec)
        results = launcher.wait(launcher.submit(plan(spec)))
        on_ray = time.perf_counter() - t
    assert all(r.status == "FINISHED" for r in results), results
    print(f"backend: {args.jobs} trivial jobs in-process {inline:.1f} s ({inline / args.jobs:.2f} s/job); "
          f"on Ray ({args.cpus} at once) {on_ray:.1f} s; overhead ≈ {(on_ray * args.cpus - inline) / args.jobs:.2f} "
          "CPU-s per job")

    sweep = _sweep(folder, "tuned", 1)
    t = time.perf_counter()
    result = tune(sweep, "S0", ["lr=log(1e-4,1e-1)"], samples=args.trials, num_cpus=args.cpus)
    took = time.perf_counter() - t
    print(f"tune: {args.trials} trivial trials in {took:.1f} s ({took / args.trials:.2f} s per trial, "
          f"{args.cpus} at once, Ray start included); best lr {result.best.values['lr']:.3g}")


if __name__ == "__main__":
    main()
