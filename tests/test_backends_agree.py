"""The demo sweep gives the same results on every backend: local, the dev SLURM cluster and Ray.

sweeps/demo.yaml (its sizes, data, batch, optimizer, schedule, threads and laws) runs with a reduced step
count, one seed and a smaller evaluation three times, each into its own MLflow store and workdir:
`run_sweep` with the local launcher (`scaling run`), `scaling submit --cluster dev --wait` (a separate
process, while the others run) and `run_sweep` on a local Ray with 2 CPUs. Each store is exported to the
tidy table and the demo's laws are fitted on it (holdout XL).

On CPU with one thread per job, the same seeds (initial weights, λ/ε generator), the same data stream and the
fixed evaluation noise, training is deterministic: the three backends must log bit-identical losses, so
every logged loss, every final L_iw and every fitted parameter and prediction is compared exactly. A
difference means that a backend changed the training (threads, seeds, data or configuration), which is
what this test is for; there is no seed noise to allow for. (Measured: size L trained 30 steps with 2
threads instead of 1 already logs different losses, in the 8th digit, so an exact comparison sees it.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from scaling.fit import FitOptions, fit_size_law
from scaling.launch.sweep import export_sweep, run_sweep
from scaling.spec import load_sweep
from tests.conftest import REPO
from tests.test_ray import ray_here  # noqa: F401  (module fixture: a local Ray with 2 CPUs in this process)

pytestmark = [
    pytest.mark.slow, pytest.mark.slurm, pytest.mark.ray,
    pytest.mark.skipif(shutil.which("sinfo") is None,
                       reason="no SLURM here (sinfo not found): bash slurm/dev-cluster.sh install && ... start"),
]

STEPS = 30
REDUCED = {"train": {"budget": STEPS, "eval_every": STEPS // 2, "ckpt_every": STEPS // 2, "log_every": 5,
                     "seeds": [0]},
           "evaluation": {"samples": 8, "lambda_step": 1.0}, "fit": {"bootstrap": 100}}
"""The demo with 30 steps (warm-up and cosine decay; evaluations at 15 and 30), its first seed only, and
8 held-out images x 21 levels: 4 jobs per backend."""

LAUNCH = {
    "local": {"backend": "local"},
    "slurm": {"backend": "slurm", "cluster": "dev", "resources": {"default": {"mem_gb": 1, "time_min": 10}}},
    "ray": {"backend": "ray", "resources": {"default": {"cpus": 1}}},
}


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def sweep_file(folder: Path, backend: str) -> Path:
    """sweeps/demo.yaml, reduced, on `backend`, with its workdir and sqlite store in `folder`."""
    folder.mkdir(parents=True)
    data = yaml.safe_load((REPO / "sweeps" / "demo.yaml").read_text())
    data = _merge(data, REDUCED)
    data = _merge(data, {"launch": {**LAUNCH[backend], "workdir": str(folder / "runs")},
                         "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"}})
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def metric_columns(table: pd.DataFrame) -> list[str]:
    """What training and evaluation compute (not timings such as perf/samples_per_s)."""
    return [c for c in table.columns if str(c).startswith(("train/", "eval/"))]


@pytest.fixture(scope="module")
def tables(request, tmp_path_factory) -> dict[str, pd.DataFrame]:
    request.getfixturevalue("ray_here")  # tests/test_ray.py's local Ray (2 CPUs), joined by the ray backend
    root = tmp_path_factory.mktemp("backends")
    paths = {b: sweep_file(root / b, b) for b in LAUNCH}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    slurm = subprocess.Popen([sys.executable, "-m", "scaling.cli", "submit", str(paths["slurm"]), "--cluster", "dev",
                              "--wait", "--timeout-min", "5"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        out = {}
        for backend in ("local", "ray"):
            outcome = run_sweep(load_sweep(paths[backend]))
            assert outcome.ok, (backend, outcome.results)
            out[backend] = pd.read_csv(outcome.table)
        printed, _ = slurm.communicate(timeout=360)
    finally:
        if slurm.poll() is None:
            slurm.kill()
            subprocess.run([sys.executable, "-m", "scaling.cli", "cancel", str(paths["slurm"])], cwd=REPO, env=env)
    assert slurm.returncode == 0, printed
    path, _, _ = export_sweep(load_sweep(paths["slurm"]))
    out["slurm"] = pd.read_csv(path)
    return out


def test_every_backend_trains_every_size_to_the_end(tables):
    spec = load_sweep(REPO / "sweeps" / "demo.yaml")
    for backend, table in tables.items():
        finals = table.sort_values("step").groupby("size").tail(1).set_index("size")
        assert sorted(finals.index) == sorted(spec.model.sizes), backend
        assert (finals["status"] == "FINISHED").all() and (finals["step"] == STEPS).all(), (backend, finals)
        assert finals[f"eval/iw/{spec.evaluation.primary}"].notna().all(), backend


def test_backends_log_identical_losses(tables):
    local = tables["local"].sort_values(["size", "step"]).reset_index(drop=True)
    columns = metric_columns(local)
    assert "train/loss" in columns and "eval/iw/laplace" in columns and "eval/level/010" in columns
    for backend in ("slurm", "ray"):
        other = tables[backend].sort_values(["size", "step"]).reset_index(drop=True)
        assert metric_columns(other) == columns, backend
        assert other[["run_id", "size", "params", "step"]].equals(local[["run_id", "size", "params", "step"]])
        pd.testing.assert_frame_equal(other[columns], local[columns], check_exact=True, obj=f"{backend} vs local")


def test_backends_give_identical_fits(tables):
    spec = load_sweep(REPO / "sweeps" / "demo.yaml")
    opts = FitOptions(bootstrap=REDUCED["fit"]["bootstrap"])
    for law in spec.fit.laws:
        fits = {b: fit_size_law(t, law, spec.metric, [spec.fit.x], holdout=list(spec.holdout), opts=opts)
                for b, t in tables.items()}
        base = fits["local"]
        assert base.holdout and base.holdout[0].actual is not None
        for backend in ("slurm", "ray"):
            fit = fits[backend]
            assert fit.values == base.values, (law, backend)
            assert [(p.label, p.predicted, p.interval, p.actual) for p in fit.holdout] == \
                [(p.label, p.predicted, p.interval, p.actual) for p in base.holdout], (law, backend)
