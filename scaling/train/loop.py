"""The built-in trainer: one job's model, AdamW, the step loop, evaluations, checkpoints and resume.

Per step: the LR of the step (`lr_at`, a pure function of the step), this rank's slice of the global
batch from `TrainStream`, its slice of the global noise (`training_loss(..., rank, world_size)`: ranks
together use exactly the draws one process would), backward (DDP averages the gradients; with
`micro_batch_size`, forward and backward per micro-batch, the gradients accumulated), one all-reduce of
(loss, stop flag), a NaN/inf check, gradient clipping, `optimizer.step()`. Then, on their intervals:
log (`train/loss`, `train/lr`, `progress/*`, `perf/samples_per_s`), evaluate (every rank its share of the
pairs, rank 0 logs `eval/iw/*` and `eval/level/*`) and checkpoint (rank 0 writes; every rank's RNG and data
state are gathered into it).

A checkpoint holds the model, AdamW's state, the step (the schedule's only state), every RNG state, and
the data stream position, so resuming continues bit for bit on CPU.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from scaling.data import TrainStream, heldout
from scaling.diffusion import sample_noise, training_loss, weighted_losses
from scaling.errors import TrainError
from scaling.evaluate import Evaluator, lambda_grid
from scaling.models import build_model
from scaling.plan import Job
from scaling.spec import Spec
from scaling.train.checkpoint import CheckpointStore, rng_state, set_rng_state
from scaling.train.dist import DistEnv, all_sum, broadcast_object, gather_objects
from scaling.train.runner import JobResult
from scaling.train.schedule import lr_at
from scaling.train.signals import StopSignals

log = logging.getLogger(__name__)

FORMAT = 1
"Checkpoint layout version."


def precision_dtype(spec: Spec, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA for `auto`, none (fp32) on CPU."""
    p = spec.train.precision
    if p == "bf16" or (p == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


COMPILE_BACKEND = "SCALING_COMPILE_BACKEND"
"Environment variable naming a torch.compile backend (e.g. `aot_eager`): then compile applies on CPU too."


def compiled(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`torch.compile(net)` (inductor) on GPU. On CPU only with SCALING_COMPILE_BACKEND set (it does not pay
    off there; the tests use `aot_eager` to trace the forward and backward of the model and DDP wrapper)."""
    backend = os.environ.get(COMPILE_BACKEND)
    if device.type != "cuda" and not backend:
        log.info("train.compile is ignored on CPU (it does not pay off there)")
        return net
    log.info("torch.compile with backend %s", backend or "inductor")
    return torch.compile(net, backend=backend or "inductor")


class Trainer:
    """Trains one job to `job.steps` (resuming from its latest checkpoint) and returns a `JobResult`."""

    def __init__(self, spec: Spec, job: Job, env: DistEnv, device: torch.device, runlog: Any, stop: StopSignals):
        self.spec, self.job, self.env, self.device = spec, job, env, device
        self.runlog, self.stop = runlog, stop
        self.store = CheckpointStore(f"{job.workdir}/checkpoints")
        if job.batch_size % env.world_size:
            raise TrainError(f"global batch {job.batch_size} is not divisible by the {env.world_size} ranks of "
                             f"{job.run_id}; change train.batch_size or the number of GPUs")
        share = job.batch_size // env.world_size
        if job.micro_batch_size and job.micro_batch_size < share and share % job.micro_batch_size:
            raise TrainError(f"each of the {env.world_size} ranks of {job.run_id} trains on {share} samples per step, "
                             f"not a multiple of micro_batch_size {job.micro_batch_size}; choose a micro_batch_size "
                             f"that divides {share}, or change train.batch_size or the number of GPUs")
        self.timings = {"setup": 0.0, "train": 0.0, "eval": 0.0, "checkpoint": 0.0}
        self.metrics: dict[str, float] = {}

    # --- set-up ---------------------------------------------------------------------------------------

    def _build(self) -> None:
        spec, job = self.spec, self.job
        torch.manual_seed(job.seed)  # initial weights: the same on every rank (DDP also broadcasts them)
        self.model = build_model(spec.model.sizes[job.size], spec.model, spec.data.image_size,
                                 spec.data.channels).to(self.device)
        opt = spec.train.optimizer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=job.lr, betas=tuple(opt.betas),
                                           weight_decay=opt.weight_decay)
        self.generator = torch.Generator().manual_seed(job.seed)  # λ and ε: the same stream on every rank
        self.stream = TrainStream(spec.data, job.batch_size, rank=self.env.rank, world_size=self.env.world_size)
        self.autocast = precision_dtype(spec, self.device)
        if self.autocast is not None and self.device.type == "cpu":
            log.warning("bf16 autocast on CPU is slow; precision: auto uses fp32 there")
        net: torch.nn.Module = self.model
        self.ddp: DistributedDataParallel | None = None
        if self.env.distributed:
            net = self.ddp = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda"
                                                     else None)
        self.net = compiled(net, self.device) if spec.train.compile else net
        ev = spec.evaluation  # every rank evaluates its share of the (image, level) pairs
        self.evaluator = Evaluator(heldout(spec.data, ev.samples), lambda_grid(ev), ev.weightings,
                                   noise_seed=ev.noise_seed, prediction=spec.diffusion.prediction,
                                   batch_size=ev.batch_size, device=self.device, rank=self.env.rank,
                                   world_size=self.env.world_size)

    def _state(self, step: int, finished: bool) -> dict | None:
        """The checkpoint of `step` (on rank 0; None elsewhere). Every rank must call it (it gathers)."""
        per_rank = gather_objects({"rng": rng_state({"noise": self.generator}), "data": self.stream.state_dict()},
                                  self.env)
        if not self.env.is_main:
            return None
        return {"format": FORMAT, "run_id": self.job.run_id, "size": self.job.size, "step": step,
                "finished": finished, "world_size": self.env.world_size, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "schedule": {"step": step}, "ranks": per_rank,
                "metrics": dict(self.metrics)}

    def _save(self, step: int, finished: bool = False) -> None:
        t = time.perf_counter()
        state = self._state(step, finished)
        if state is not None:
            self.store.save(state, step, finished)
        self.timings["checkpoint"] += time.perf_counter() - t

    def _resume(self) -> int:
        """Load the latest good checkpoint (rank 0 picks it, every rank reads it); returns its step."""
        found = self.store.load_latest() if self.env.is_main else None
        step = broadcast_object(found[0].step if found else None, self.env)
        if step is None:
            return 0
        state = found[1] if found else self.store.load(step)  # ranks > 0 read the file rank 0 chose
        if state.get("run_id") != self.job.run_id:
            raise TrainError(f"checkpoint {self.store.path(step)} belongs to {state.get('run_id')!r}, not "
                             f"{self.job.run_id!r}; use a separate workdir per job")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        ranks = state["ranks"]
        mine = ranks[self.env.rank] if len(ranks) == self.env.world_size else ranks[0]
        if len(ranks) != self.env.world_size:
            log.warning("checkpoint was written by %d ranks, resuming on %d: data order and noise continue from "
                        "rank 0's state", len(ranks), self.env.world_size)
        set_rng_state(mine["rng"], {"noise": self.generator})
        self.stream.load_state_dict(mine["data"])
        self.metrics = dict(state.get("metrics", {}))
        log.info("%s resumes at step %d", self.job.run_id, step)
        return step

    # --- the loop -------------------------------------------------------------------------------------

    def _evaluate(self, step: int) -> None:
        t = time.perf_counter()
        result = self.evaluator(self.model)  # fp32, unwrapped: the same numbers on any launcher and world size
        metrics = result.metrics()
        self.metrics.update({k: v for k, v in metrics.items() if k.startswith("eval/iw/")})
        self.runlog.log(step, metrics)  # other ranks' run logs are in memory
        if self.env.is_main:
            log.info("%s step %d: L_iw %s", self.job.run_id, step,
                     ", ".join(f"{k}={v:.4f}" for k, v in result.iw.items()))
        self.timings["eval"] += time.perf_counter() - t

    def run(self) -> JobResult:
        t0 = time.perf_counter()
        spec, job, tr = self.spec, self.job, self.spec.train
        self._build()
        step = self._resume()
        if self.env.is_main and step == 0:
            ev = spec.evaluation
            self.runlog.log_json_artifact("lambda_grid.json", {"lambda": lambda_grid(ev).tolist()})
        self.timings["setup"] = time.perf_counter() - t0
        if step >= job.steps:  # finished before (its result.json was lost): nothing to train
            return self._result(step)
        self.net.train()
        loss_sum, loss_n, train_t = 0.0, 0, 0.0  # since the last log
        while step < job.steps:
            t = time.perf_counter()
            lr = lr_at(step, job.steps, job.lr, tr.schedule)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x, y = self._batch()
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._forward_backward(x, y)
            total, stops = all_sum([loss.item(), float(self.stop.requested)], self.env, self.device)
            mean_loss = total / self.env.world_size
            if not math.isfinite(mean_loss):
                raise TrainError(f"size {job.size} ({job.run_id}): the training loss is {mean_loss} at step {step + 1}"
                                 f" (lr {lr:.3g}); the last good checkpoint is kept. Lower the learning rate or "
                                 "enable train.optimizer.grad_clip")
            if tr.optimizer.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tr.optimizer.grad_clip)
            self.optimizer.step()
            step += 1
            loss_sum, loss_n = loss_sum + mean_loss, loss_n + 1
            train_t += time.perf_counter() - t
            self.timings["train"] += time.perf_counter() - t
            if step % tr.log_every == 0 or step == job.steps:
                self.metrics["train/loss"] = loss_sum / loss_n
                self.runlog.log(step, {"train/loss": loss_sum / loss_n, "train/lr": lr,
                                       "progress/samples": step * job.batch_size,
                                       "progress/flops": step * job.flops_per_step,
                                       "perf/samples_per_s": loss_n * job.batch_size / max(train_t, 1e-9)})
                loss_sum, loss_n, train_t = 0.0, 0, 0.0
            if step % tr.eval_every == 0 or step == job.steps:
                self._evaluate(step)
            if step == job.steps:
                break
            if stops > 0:
                self._save(step)
                self.runlog.flush()
                reason = f"stopped by {self.stop.name or 'a signal on another rank'} at step {step}; relaunch resumes"
                return self._result(step, "KILLED", reason)
            if step % tr.ckpt_every == 0:
                self._save(step)
        self._save(step, finished=True)
        self.runlog.flush()
        return self._result(step)

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """This rank's loss of the step, its gradients computed: in one pass, or accumulated over micro-batches
        (the λ and ε of the whole share drawn first, so the draws do not depend on the micro-batch; DDP syncs
        the gradients in the last pass only)."""
        diffusion, env = self.spec.diffusion, self.env
        amp = torch.autocast(self.device.type, self.autocast) if self.autocast else nullcontext()
        micro = self.job.micro_batch_size
        if not micro or micro >= len(x):
            with amp:
                loss = training_loss(self.net, x, y, self.generator, diffusion, rank=env.rank,
                                     world_size=env.world_size)
            loss.backward()
            return loss
        lam, eps = sample_noise(x, self.generator, diffusion, rank=env.rank, world_size=env.world_size)
        total = torch.zeros((), device=x.device)
        for start in range(0, len(x), micro):
            part = slice(start, start + micro)
            last = start + micro >= len(x)
            with self.ddp.no_sync() if self.ddp is not None and not last else nullcontext():
                with amp:
                    loss = weighted_losses(self.net, x[part], None if y is None else y[part], lam[part], eps[part],
                                           diffusion).sum() / len(x)
                loss.backward()
            total += loss.detach().float()
        return total

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = next(self.stream)
        x = x.to(self.device, non_blocking=True)
        y = None if y is None or not self.spec.model.num_classes else y.to(self.device, non_blocking=True)
        return x, y

    def _result(self, step: int, status: str = "FINISHED", reason: str | None = None) -> JobResult:
        metrics = dict(self.metrics)
        metrics.update({f"perf/{k}_s": v for k, v in self.timings.items()})
        return JobResult(self.job.run_id, status, step, metrics, reason)
