"""Demo wall time: `scaling run sweeps/demo.yaml` in an empty folder, timed from outside, as a newcomer runs it.

The sweep file is copied (with any `include` overlays, and `overrides` merged in) into the folder, which
becomes the working directory: the embedded MLflow store `./mlflow.db`, `runs/`, `fits/` and `reports/`
are all new. Reported: wall time, exit status, and the backtest of each held-out size from the fit files.

    PYTHONPATH=$PWD python -m benchmarks.demo              # the full demo (a few minutes)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.overhead import DEMO, ROOT, _merge


def write_copy(sweep: Path, folder: Path, overrides: dict | None = None) -> Path:
    """Copy `sweep` (and the files it includes) into `folder`, with `overrides` merged into its mapping."""
    folder.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(sweep.read_text()) or {}
    includes = data.get("include") or []
    for name in [includes] if isinstance(includes, str) else includes:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sweep.parent / name, folder / name)
    path = folder / sweep.name
    if overrides:
        path.write_text(yaml.safe_dump(_merge(data, overrides), sort_keys=False))
    else:
        shutil.copy(sweep, path)
    return path


def run_demo(sweep: str | Path = DEMO, folder: Path | None = None, overrides: dict | None = None) -> dict:
    """Run `scaling run` on a copy of `sweep` in `folder`; returns its wall time, exit status, output tail,
    the table, store and experiment it left, and the backtest of each held-out size (primary metric, each law):
    `backtest` maps (law, size) to (relative error, whether the actual value is inside the interval)."""
    from scaling.fit import FitResult, fit_filename
    from scaling.plan import plan
    from scaling.spec import load_sweep

    folder = Path(folder or tempfile.mkdtemp(prefix="scaling-demo-"))
    path = write_copy(Path(sweep), folder, overrides)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "scaling.cli", "run", path.name], cwd=folder, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    spec = load_sweep(path)
    workdir = Path(spec.launch.workdir)
    table = (workdir if workdir.is_absolute() else folder / workdir) / spec.name / "table.csv"
    backtest = {}
    for law in spec.fit.laws:
        fit = folder / "fits" / spec.name / fit_filename(spec.metric, law, spec.fit.x)
        if fit.exists():
            for p in FitResult.read(fit).holdout:
                if p.relative_error is not None:
                    backtest[(law, p.label)] = (p.relative_error, p.inside)
    return {"wall_s": wall, "exit": done.returncode, "output": (done.stdout + done.stderr)[-3000:],
            "table": table if table.exists() else None, "uri": spec.tracking.uri or f"sqlite:///{folder / 'mlflow.db'}",
            "experiment": spec.experiment, "jobs": len(plan(spec)), "metric": spec.metric, "backtest": backtest,
            "report": folder / "reports" / spec.name / "index.html"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default=str(DEMO))
    p.add_argument("--folder", type=Path, default=None, help="working folder (default: a new temporary one)")
    args = p.parse_args(argv)
    r = run_demo(args.sweep, args.folder)
    print(r["output"])
    print(f"`scaling run` of {args.sweep}: {r['wall_s']:.1f} s wall, exit {r['exit']}")
    for (law, size), (err, inside) in r["backtest"].items():
        print(f"  {size} predicted by {law}: {err:+.2%} ({'inside' if inside else 'outside'} its interval)")
    return r["exit"]


if __name__ == "__main__":
    sys.exit(main())
