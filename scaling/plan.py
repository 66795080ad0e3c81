"""The planner (pure): a sweep spec -> the list of jobs it runs, with deterministic run ids.

A run id is `<sweep>-<size>-<budget>-s<seed>`, e.g. `demo-M-600steps-s0` or `vsd-t2i-XL-1xC-s0`: the same
sweep file always plans the same ids, which is how a relaunched or requeued job finds its checkpoint and
its MLflow run again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from scaling.sizes import size_info
from scaling.spec import Budget, Resources, Spec


@dataclass(frozen=True)
class Job:
    """One training run: a size, a budget and a seed of a sweep."""

    run_id: str
    "Deterministic id `<sweep>-<size>-<budget>-s<seed>`."
    sweep: str
    size: str
    budget: Budget
    seed: int
    params: int
    "Exact trainable parameters."
    steps: int
    "Optimizer steps this budget gives this size."
    batch_size: int
    tokens_per_sample: int
    flops_per_step: float
    "Training FLOPs per optimizer step (forward + backward, whole global batch)."
    lr: float
    "Peak learning rate of this size (per-size override and μP scaling applied)."
    resources: Resources
    "Resolved resources."
    workdir: str
    "Checkpoints and logs: <launch.workdir>/<sweep>/<run id>."
    micro_batch_size: int | None = None
    "Samples per forward/backward pass on each rank (gradient accumulation); None: the rank's whole share."

    @property
    def total_flops(self) -> float:
        return self.flops_per_step * self.steps

    @property
    def samples(self) -> int:
        return self.steps * self.batch_size

    def gpu_hours(self, flops_per_gpu_second: float) -> float:
        """Estimated GPU-hours at an achieved throughput of `flops_per_gpu_second` per GPU."""
        return self.total_flops / flops_per_gpu_second / 3600.0


def steps_for(budget: Budget, params: int, tokens_per_sample: int, batch_size: int, flops_per_step: float,
              tokens_per_param: float) -> int:
    """Optimizer steps that a budget gives one size."""
    if budget.kind == "steps":
        return int(budget.value)
    if budget.kind == "xC":
        tokens = budget.value * tokens_per_param * params
        return max(1, math.ceil(tokens / (batch_size * tokens_per_sample)))
    return max(1, math.ceil(budget.value / flops_per_step))


def lr_for(spec: Spec, size: str) -> float:
    """The size's peak learning rate: its own `lr` if set, else the sweep's, μP-scaled if asked."""
    sizes = spec.model.sizes
    if sizes[size].lr is not None:
        return float(sizes[size].lr)
    opt = spec.train.optimizer
    if opt.lr_scale == "mup":
        base = opt.base_width or next(iter(sizes.values())).width
        return opt.lr * base / sizes[size].width
    return opt.lr


def run_id(sweep: str, size: str, budget: Budget, seed: int) -> str:
    return f"{sweep}-{size}-{budget.label}-s{seed}"


def plan(spec: Spec, profile: Resources | None = None) -> list[Job]:
    """Every job of the sweep, sizes in the order of the file, then budgets, then seeds."""
    jobs = []
    batch = spec.train.batch_size
    for size in spec.model.sizes:
        info = size_info(size, spec.model, spec.data)
        flops_per_step = info.flops_per_sample * batch
        for budget in spec.train.budget:
            steps = steps_for(budget, info.params, info.tokens, batch, flops_per_step, spec.train.tokens_per_param)
            for seed in spec.seeds_for(size):
                rid = run_id(spec.name, size, budget, seed)
                jobs.append(Job(
                    run_id=rid, sweep=spec.name, size=size, budget=budget, seed=seed, params=info.params,
                    steps=steps, batch_size=batch, tokens_per_sample=info.tokens, flops_per_step=flops_per_step,
                    lr=lr_for(spec, size), resources=spec.resources_for(size, profile),
                    workdir=str(Path(spec.launch.workdir) / spec.name / rid),
                    micro_batch_size=spec.micro_batch_for(size),
                ))
    return jobs
