"""`JobRunner` as submitit runs it (local and SLURM backends): logging set up in the job, and a
`checkpoint()` that returns submitit's `DelayedSubmission`, so a timed-out or preempted job is requeued
and resumes from the checkpoint the trainer just saved (`scaling.train` never imports submitit)."""

from __future__ import annotations

import logging
from typing import Any


class SubmititRunner:
    """Wraps a `scaling.train.JobRunner` (picklable; submitit calls it in the job's process)."""

    def __init__(self, runner: Any):
        self.runner = runner

    def __call__(self) -> Any:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
        return self.runner()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(SubmititRunner(self.runner.checkpoint(*args, **kwargs)))

    def __repr__(self) -> str:
        return f"SubmititRunner({self.runner!r})"
