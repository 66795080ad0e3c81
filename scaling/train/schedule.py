"""The learning-rate schedule: a pure function of the step (nothing to save but the step)."""

from __future__ import annotations

import math

from scaling.spec import ScheduleSpec


def lr_at(step: int, total_steps: int, peak: float, schedule: ScheduleSpec) -> float:
    """Learning rate of optimizer step `step` (0-based) out of `total_steps`.

    Linear warm-up over `warmup_steps` from peak/warmup_steps to peak, then constant, or a cosine or linear
    decay that reaches `min_lr_ratio × peak` at the last step.
    """
    warm = schedule.warmup_steps
    if step < warm:
        return peak * (step + 1) / warm
    if schedule.name == "constant":
        return peak
    span = max(1, total_steps - 1 - warm)
    progress = min(1.0, (step - warm) / span)
    floor = schedule.min_lr_ratio
    if schedule.name == "cosine":
        return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    if schedule.name == "linear":
        return peak * (1 - (1 - floor) * progress)
    raise ValueError(f"unknown schedule {schedule.name!r}")
