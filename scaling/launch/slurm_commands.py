"""What `scaling submit / resubmit / cancel` (and `status` of SLURM sweeps) do; the CLI only prints.

Each command function takes the sweep file and the `--cluster` override and returns the lines to print.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from scaling.launch.slurm import SlurmJobStatus, SlurmLauncher
from scaling.plan import Job
from scaling.spec import Spec, load_sweep

log = logging.getLogger(__name__)


def open_sweep(sweep: str | Path, cluster: str | None = None, **options) -> SlurmLauncher:
    """The sweep's SLURM launcher; `cluster` overrides `launch.cluster`."""
    overrides = {"launch": {"cluster": cluster}} if cluster else None
    return SlurmLauncher(load_sweep(sweep, overrides), **options)


def _shape(job: Job, launcher: SlurmLauncher) -> str:
    r = launcher.resources(job)
    gpu_type = launcher.profile.gpu_type
    gpus = f"{r.gpus} GPU" + ("s" if r.gpus != 1 else "") + (f" ({gpu_type})" if gpu_type and r.gpus else "")
    where = " ".join(f"{k} {getattr(r, k)}" for k in ("partition", "account", "qos") if getattr(r, k))
    text = f"{r.nodes} node x {gpus}, {r.cpus} CPU/task, {r.mem_gb:g} GB, {r.time_min} min"
    return f"{text}, {where}" if where else text


def dry_run(sweep: str | Path, cluster: str | None = None) -> list[str]:
    """The sbatch script of every array `submit` would send, each headed by its jobs."""
    launcher = open_sweep(sweep, cluster)
    lines = []
    for group, text in launcher.render(launcher.plan()):
        kind = f"array of {len(group)} jobs" if len(group) > 1 else "1 job"
        lines.append(f"# --- {kind}: {', '.join(j.run_id for j in group)}")
        lines.append(text.rstrip())
        lines.append("")
    return lines


def submit(sweep: str | Path, cluster: str | None = None, wait: bool = False, timeout_min: float | None = None,
           failed_only: bool | None = None) -> tuple[list[str], int]:
    """Submit the sweep (or, with `failed_only` set, resubmit); returns the lines to print and an exit code."""
    launcher = open_sweep(sweep, cluster, timeout_s=timeout_min * 60 if timeout_min else None)
    jobs = launcher.plan()
    if failed_only is not None:
        jobs = launcher.resubmittable(jobs, failed_only)
        if not jobs:
            what = "failed, cancelled or timed-out" if failed_only else "unfinished"
            return [f"sweep {launcher.spec.name}: no {what} jobs to resubmit"], 0
    records_before = launcher.records.load()
    handles = launcher.submit(jobs)
    name = launcher.profile.name or "(no profile)"
    lines = [f"sweep {launcher.spec.name}: {len(jobs)} jobs on cluster {name}"]
    arrays: dict[str, list] = {}
    for h in handles:
        if h.skipped:
            lines.append(f"  finished already: {h.job.run_id}")
        elif h.job.run_id in records_before and records_before[h.job.run_id].job_id == h.backend_id:
            lines.append(f"  still queued or running: {h.job.run_id} (SLURM job {h.backend_id})")
        else:
            arrays.setdefault(h.backend_id.split("_")[0], []).append(h)
    for array_id, group in arrays.items():
        lines.append(f"  SLURM {'array' if len(group) > 1 else 'job'} {array_id}: {len(group)} jobs, "
                     f"{_shape(group[0].job, launcher)}")
        for h in group:
            lines.append(f"    {h.backend_id:<12} {h.job.run_id}")
    lines.append(f"job ids: {launcher.records.path}; follow: scaling status {sweep}")
    if not wait:
        return lines, 0
    results = launcher.wait(handles)
    for r in results:
        lines.append(f"  {r.run_id}: {r.status} at step {r.step}" + (f" ({r.reason})" if r.reason else ""))
    return lines, 0 if all(r.status == "FINISHED" for r in results) else 1


def cancel(sweep: str | Path, cluster: str | None = None) -> list[str]:
    launcher = open_sweep(sweep, cluster)
    if not launcher.records.load():
        return [f"sweep {launcher.spec.name}: nothing was submitted ({launcher.records.path} has no jobs)"]
    ids = launcher.cancel(launcher.plan())
    if not ids:
        return [f"sweep {launcher.spec.name}: no queued or running SLURM jobs"]
    return [f"sweep {launcher.spec.name}: cancelled SLURM jobs {' '.join(ids)}; checkpoints are kept "
            f"(scaling resubmit {sweep} --failed resumes them)"]


def submitted(spec: Spec) -> bool:
    """Whether `scaling submit` sent this sweep to SLURM (its slurm_jobs.json exists)."""
    return (Path(spec.launch.workdir) / spec.name / "slurm_jobs.json").exists()


def _num(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4g}"


def status_lines(statuses: Sequence[SlurmJobStatus]) -> list[str]:
    """One line per job: run id, SLURM state, job id, requeues, step, latest losses, reason or log."""
    head = ["run id", "slurm", "job id", "requeues", "step", "L_iw", "train loss", "state", "log / reason"]
    rows = [[s.run_id, s.slurm_state, s.backend_id or "-", str(s.restarts),
             f"{s.step if s.step is not None else '-'}/{s.steps}", _num(s.loss), _num(s.train_loss), s.state,
             s.reason or s.log or ""] for s in statuses]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *rows]]

