"""Text views of job statuses: live progress (which job, step, loss, ETA), `scaling status`, the summary.

Pure formatting: these functions return lines; the CLI prints them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from scaling.launch.base import JobStatus

DONE = ("FINISHED", "FAILED", "KILLED")


def _num(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(c) for c in col) for col in zip(*rows)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


class ProgressView:
    """Live progress lines; ETAs come from each job's step rate since this view first saw it running."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._first: dict[str, tuple[float, int]] = {}

    def eta(self, s: JobStatus) -> str:
        if s.state != "RUNNING" or s.step is None:
            return ""
        now = self.clock()
        t0, step0 = self._first.setdefault(s.run_id, (now, s.step))
        if s.step <= step0 or now <= t0:
            return "ETA ?"
        rate = (s.step - step0) / (now - t0)
        return f"ETA {_duration(max(0, s.steps - s.step) / rate)}"

    def lines(self, statuses: Sequence[JobStatus]) -> list[str]:
        counts = {state: sum(s.state == state for s in statuses) for state in ("FINISHED", "FAILED", "KILLED",
                                                                               "RUNNING", "PENDING")}
        head = f"{sum(counts[d] for d in DONE)}/{len(statuses)} done (" + ", ".join(
            f"{n} {state.lower()}" for state, n in counts.items() if n) + ")"
        rows = [[s.run_id, s.state, f"step {'-' if s.step is None else s.step}/{s.steps}",
                 f"loss {_num(s.train_loss)}", f"L_iw {_num(s.loss)}", self.eta(s)] for s in statuses]
        return [head, *("  " + line for line in _table(rows))]


def status_lines(statuses: Sequence[JobStatus]) -> list[str]:
    """`scaling status`: one line per job: state, step, latest L_iw, MLflow link (and the log)."""
    rows = [["run id", "state", "step", "L_iw", "MLflow run", "log"]]
    for s in statuses:
        rows.append([s.run_id, s.state, f"{'-' if s.step is None else s.step}/{s.steps}", _num(s.loss), s.url or "-",
                     s.log or "-"])
    lines = _table(rows)
    lines += [f"  {s.run_id}: {s.reason}" for s in statuses if s.reason and s.state != "FINISHED"]
    return lines


def summary_lines(statuses: Sequence[JobStatus], results: Sequence) -> list[str]:
    """The end of `scaling run`: each job's final status, step, L_iw, and where its log is."""
    rows = [["run id", "status", "step", "L_iw", "log"]]
    by_id = {r.run_id: r for r in results}
    for s in statuses:
        r = by_id.get(s.run_id)
        state = r.status if r is not None else s.state
        step = r.step if r is not None else s.step
        rows.append([s.run_id, state, f"{'-' if step is None else step}/{s.steps}", _num(s.loss), s.log or "-"])
    lines = _table(rows)
    for r in results:
        if r.status != "FINISHED" and r.reason:
            lines.append(f"  {r.run_id}: {r.reason}")
    return lines
