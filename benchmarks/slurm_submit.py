"""Time to submit a 100-job sweep to SLURM: as job arrays (what `scaling submit` does) vs one sbatch per job.

Needs a running cluster (`bash slurm/dev-cluster.sh start`). The jobs are submitted held (`--hold`) so
that nothing runs, then cancelled. The sweep's sqlite MLflow store exists already (a sweep's first
submission creates it once, which takes a few seconds). Target: under 2 s for the arrays.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/slurm_submit.py [--jobs 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SIZES = ("S", "M", "L", "XL")


def sweep_file(folder: Path, jobs: int) -> Path:
    """A sweep of `jobs` jobs: 4 sizes (each its own resource shape) x jobs/4 seeds, submitted held."""
    data = {
        "name": "bench",
        "model": {"sizes": {s: {"depth": 1, "width": 16, "heads": 2, "patch": 4} for s in SIZES}},
        "data": {"source": "shapes", "image_size": 8},
        "train": {"budget": 10, "batch_size": 8, "seeds": list(range(jobs // len(SIZES)))},
        "trainer": "tests.slurm_trainer:count",
        "launch": {"backend": "slurm", "cluster": "dev", "workdir": str(folder / "runs"),
                   "resources": {"default": {"mem_gb": 0.25, "time_min": 5, "extra_sbatch": ["--hold"]},
                                 **{s: {"cpus": 1 + i} for i, s in enumerate(SIZES)}}},
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"},
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    from scaling.track import ensure_store

    ensure_store(data["tracking"]["uri"])  # as after a sweep's first submission (creating it takes seconds, once)
    return path


def submit_once(per_job: bool, jobs: int) -> tuple[float, int]:
    """Seconds to submit the sweep and the number of sbatch calls; the jobs are cancelled afterwards."""
    from scaling.launch.slurm import SlurmLauncher
    from scaling.launch.slurm_queue import scancel
    from scaling.spec import load_sweep

    with tempfile.TemporaryDirectory() as tmp:
        launcher = SlurmLauncher(load_sweep(sweep_file(Path(tmp), jobs)))
        if per_job:  # every group of one: one sbatch per job, as without arrays
            launcher.profile = dataclasses.replace(launcher.profile, max_array_size=1)
        planned = launcher.plan()
        start = time.perf_counter()
        handles = launcher.submit(planned)
        elapsed = time.perf_counter() - start
        ids = [h.backend_id for h in handles]
        scancel(sorted({i.split("_")[0] for i in ids}))
        assert len(ids) == jobs
        return elapsed, len({i.split("_")[0] for i in ids})


def cli_once(jobs: int) -> float:
    """Wall time of the whole `scaling submit` command (Python start, imports, planning, sbatch)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = sweep_file(Path(tmp), jobs)
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "scaling.cli", "submit", str(path)], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
        elapsed = time.perf_counter() - start
        arrays = [line.split()[2].rstrip(":") for line in out.splitlines() if line.startswith("  SLURM array")]
        subprocess.run(["scancel", *arrays], check=True)
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    arrays = [submit_once(False, args.jobs) for _ in range(args.repeat)]
    single = [submit_once(True, args.jobs) for _ in range(max(1, args.repeat // 2))]
    cli = [cli_once(args.jobs) for _ in range(args.repeat)]
    med = statistics.median
    print(f"{args.jobs} jobs, median of {args.repeat} runs (per-job: {len(single)}):")
    print(f"  as arrays:       {med(t for t, _ in arrays):6.2f} s  ({arrays[0][1]} sbatch calls)   target < 2 s")
    print(f"  one sbatch each: {med(t for t, _ in single):6.2f} s  ({single[0][1]} sbatch calls)")
    print(f"  `scaling submit` command, whole process (arrays): {med(cli):6.2f} s")


if __name__ == "__main__":
    main()
