"""What SLURM says about a sweep's jobs: states from sacct (squeue when accounting is off), scancel, and
the record of submitted job ids in `<workdir>/<sweep>/slurm_jobs.json`.

States are reduced to the words `scaling status` shows: pending, running, requeued, completed, failed,
cancelled, timeout, and unknown (SLURM does not know the id: accounting off and the job gone from the
queue, or a job id from another cluster). Every call has a time limit: nothing here waits forever.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scaling.errors import LaunchError

log = logging.getLogger(__name__)

QUERY_TIMEOUT_S = 60.0
"""Longest a single sacct/squeue/scancel call may take."""

_WORDS = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "requeued",
    "REQUEUED": "requeued", "RESV_DEL_HOLD": "pending", "SUSPENDED": "running", "RUNNING": "running",
    "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running", "RESIZING": "running",
    "COMPLETED": "completed", "FAILED": "failed", "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "failed", "DEADLINE": "failed", "SPECIAL_EXIT": "failed", "REVOKED": "cancelled",
    "CANCELLED": "cancelled", "TIMEOUT": "timeout", "PREEMPTED": "requeued",
}
"""SLURM's states (sacct's long names) -> the words `scaling status` shows."""
_SHORT = {"PD": "PENDING", "CF": "CONFIGURING", "R": "RUNNING", "CG": "COMPLETING", "CD": "COMPLETED",
          "F": "FAILED", "CA": "CANCELLED", "TO": "TIMEOUT", "NF": "NODE_FAIL", "OOM": "OUT_OF_MEMORY",
          "PR": "PREEMPTED", "RQ": "REQUEUED", "RH": "REQUEUE_HOLD", "S": "SUSPENDED", "BF": "BOOT_FAIL",
          "DL": "DEADLINE", "SE": "SPECIAL_EXIT", "SO": "STAGE_OUT", "SI": "SIGNALING", "RV": "REVOKED"}
DONE = frozenset({"completed", "failed", "cancelled", "timeout"})
"""Words of a job that will not run again by itself."""


@dataclass(frozen=True)
class QueueState:
    """One job (or array task) as SLURM knows it now."""

    job_id: str
    "`<array id>_<index>` for an array task, else the job id."
    slurm: str
    "SLURM's own state, e.g. `CANCELLED by 0`; '' when unknown."
    word: str
    "pending, running, requeued, completed, failed, cancelled, timeout or unknown."
    restarts: int = 0
    "Earlier attempts of this job id (requeues)."
    exit_code: str = ""
    "`<code>:<signal>` of the last attempt, when sacct has it."

    @property
    def done(self) -> bool:
        return self.word in DONE


def word_of(slurm_state: str, restarts: int = 0) -> str:
    name = slurm_state.split()[0].upper() if slurm_state.strip() else ""
    word = _WORDS.get(_SHORT.get(name, name), "unknown")
    if word == "pending" and restarts:
        return "requeued"
    return word


def expand_ids(field_value: str) -> list[str]:
    """sacct/squeue JobID -> task ids: `12_[0-2,5%4]` -> 12_0, 12_1, 12_2, 12_5; `12_3` -> 12_3; `12` -> 12."""
    m = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", field_value.strip())
    if not m:
        return [field_value.strip()]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _run(cmd: list[str], timeout: float = QUERY_TIMEOUT_S) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise LaunchError(f"`{cmd[0]}` is not on the PATH: run scaling where the SLURM client commands work "
                          "(a login node), or install them (Debian: apt-get install slurm-client)")
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"`{' '.join(cmd[:3])} ...` did not answer within {timeout:.0f} s: "
                          "is slurmctld up?") from None


def _main_ids(job_ids: Iterable[str]) -> list[str]:
    return sorted({j.split("_")[0] for j in job_ids}, key=int)


def sacct_states(job_ids: Sequence[str]) -> dict[str, QueueState] | None:
    """States from sacct (all attempts, so requeues are counted); None if accounting is not available."""
    if not job_ids or shutil.which("sacct") is None:
        return None
    cmd = ["sacct", "-X", "-D", "-n", "-P", "-o", "JobID,State,ExitCode,Submit", "-j", ",".join(_main_ids(job_ids))]
    proc = _run(cmd)
    if proc.returncode != 0:
        log.debug("sacct failed (%s): using squeue", proc.stderr.strip())
        return None
    attempts: dict[str, list[tuple[str, str, str]]] = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 4:
            continue
        for tid in expand_ids(parts[0]):
            attempts.setdefault(tid, []).append((parts[3], parts[1], parts[2]))
    out = {}
    for tid, rows in attempts.items():
        rows.sort(key=lambda r: r[0])  # by submit time: the last row is the latest attempt
        _, state, code = rows[-1]
        restarts = sum(word_of(r[1]) == "requeued" for r in rows)  # each requeue leaves a REQUEUED row
        out[tid] = QueueState(tid, state, word_of(state, restarts), restarts, code)
    return out


def squeue_states(job_ids: Sequence[str]) -> dict[str, QueueState]:
    """States of the jobs still in the queue (squeue keeps finished jobs only for MinJobAge, ~5 min)."""
    if not job_ids:
        return {}
    proc = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(_main_ids(job_ids))])
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        raise LaunchError(f"squeue failed: {proc.stderr.strip() or proc.stdout.strip()}")
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 2:
            for tid in expand_ids(parts[0]):
                out[tid] = QueueState(tid, parts[1], word_of(parts[1]))
    return out


def query(job_ids: Sequence[str]) -> dict[str, QueueState]:
    """Every id's state: sacct first, squeue for ids sacct does not know (yet); `unknown` for the rest."""
    ids = [j for j in job_ids if j]
    found = sacct_states(ids) or {}
    # sacct shows a requeued job as REQUEUED/PREEMPTED until its next attempt starts: squeue tells whether
    # it waits to run again (requeued) or left the queue (a preempted job that was cancelled).
    check = [j for j in ids if j not in found or found[j].word == "requeued"]
    queued = squeue_states(check) if check else {}
    for j in check:
        old, now = found.get(j), queued.get(j)
        if now is not None:
            restarts = old.restarts if old else 0
            found[j] = QueueState(j, now.slurm, word_of(now.slurm, restarts), restarts, old.exit_code if old else "")
        elif old is not None:
            found[j] = QueueState(j, old.slurm, "cancelled" if old.slurm.startswith("PREEMPTED") else "unknown",
                                  old.restarts, old.exit_code)
    return {j: found.get(j, QueueState(j, "", "unknown")) for j in ids}


def scancel(job_ids: Sequence[str]) -> None:
    """Cancel jobs; ids that already ended are fine."""
    ids = [j for j in job_ids if j]
    if not ids:
        return
    proc = _run(["scancel", *ids])
    errors = [line for line in proc.stderr.splitlines()
              if "error" in line.lower() and "already completing or completed" not in line
              and "Invalid job id specified" not in line]
    if proc.returncode != 0 and errors:
        raise LaunchError(f"scancel {' '.join(ids)} failed: {'; '.join(errors)}")


# --- the record of submitted jobs -------------------------------------------------------------------

@dataclass(frozen=True)
class JobRecord:
    """One job of a sweep as it was last submitted to SLURM."""

    run_id: str
    job_id: str
    "`<array id>_<index>`."
    folder: str
    "submitit's folder: `<job id>_0_log.out` / `_log.err` / `_result.pkl` are there."
    cluster: str = ""
    submitted: float = 0.0
    "Unix time of the submission."
    previous: tuple[str, ...] = field(default=())
    "Job ids of earlier submissions of this run id (resubmits), oldest first."


class JobRecords:
    """`<workdir>/<sweep>/slurm_jobs.json`: run id -> `JobRecord` of its latest submission."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> dict[str, JobRecord]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return {rid: JobRecord(**{**rec, "previous": tuple(rec.get("previous", ()))})
                    for rid, rec in data["jobs"].items()}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LaunchError(f"{self.path} is unreadable ({e}); the jobs in it still run: see squeue --me. "
                              "Move the file away to start over") from None

    def add(self, records: Sequence[JobRecord]) -> dict[str, JobRecord]:
        """Record new submissions (a resubmitted run id keeps its earlier job ids in `previous`)."""
        current = self.load()
        for rec in records:
            old = current.get(rec.run_id)
            if old is not None and old.job_id != rec.job_id:
                rec = JobRecord(**{**asdict(rec), "previous": (*old.previous, old.job_id)})
            current[rec.run_id] = rec
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        jobs = {rid: {**asdict(r), "previous": list(r.previous)} for rid, r in current.items()}
        payload = {"format": 1, "jobs": jobs}
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, self.path)
        return current
