"""The Ray Tune side of `scaling tune`: trials of one size under the ASHA scheduler.

`run_trials` builds a `Tuner` over `trial`, which trains one configuration with `JobRunner` (the built-in
trainer or the sweep's own) and reports `{"step", "liw"}` to Tune each time the primary L_iw is logged.
Each trial is an MLflow run tagged `mlflow.parentRunId` = the tune's parent run; a trial that raises is
started again (`FailureConfig(max_failures)`) and resumes from its checkpoint, as a relaunched job does.
See `scaling.tune` for the search syntax, the results and the overlay.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scaling.errors import LaunchError
from scaling.launch.ray import ranks
from scaling.launch.ray_session import address_of, import_ray, ray_session
from scaling.plan import Job, plan
from scaling.spec import Spec
from scaling.train import JobRunner
from scaling.tune import SearchParam, Trial, with_values

log = logging.getLogger(__name__)

TAG_PARENT = "mlflow.parentRunId"
TAG_TUNE = "scaling.tune"


class TrialStopped(BaseException):
    """Raised inside a trial when Tune tells it to stop (ASHA); the driver marks its run KILLED."""


class _Reporting:
    """A run log that also reports the primary L_iw to Tune (after storing it in MLflow)."""

    def __init__(self, inner: Any, metric: str, steps: int):
        self.inner, self.metric, self.steps = inner, metric, steps
        self.stopped = False

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.inner.log(step, metrics)
        if self.metric in metrics and not self.stopped:
            from ray import tune

            self.inner.flush(timeout=60)
            try:
                tune.report({"step": int(step), "liw": float(metrics[self.metric])})
            except SystemExit:  # Tune's way of ending a trial it stopped (ASHA stops at max_t too)
                self.stopped = True
                if step < self.steps:
                    raise TrialStopped(f"stopped early by the ASHA scheduler at step {step}") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TrialRunner(JobRunner):
    """`JobRunner` whose MLflow run is nested under the tune's parent run and whose L_iw goes to Tune."""

    def __init__(self, spec: Spec, job: Job, parent: str, tune_name: str, values: Mapping[str, Any]):
        super().__init__(spec, job)
        self.parent, self.tune_name, self.values = parent, tune_name, dict(values)

    def _open_runlog(self, env: Any) -> Any:
        from scaling.track import Tracker, job_params, job_tags

        tracker = Tracker(self.spec.tracking.uri, self.spec.experiment)
        tags = {**job_tags(self.spec, self.job), TAG_PARENT: self.parent, TAG_TUNE: self.tune_name}
        params = {**job_params(self.spec, self.job), **{f"tune.{k}": v for k, v in self.values.items()}}
        inner = tracker.open_run(self.job.run_id, tags=tags, params=params)
        return _Reporting(inner, f"eval/iw/{self.spec.evaluation.primary}", self.job.steps)


def trial(config: dict, *, spec: Spec, job: Job, params: Sequence[SearchParam], tune_name: str, parent: str,
          folder: str) -> None:
    """One trial: the spec with this config's values, trained as its own run id in `folder`."""
    from ray import tune

    # Tune reuses this process for the next trial once this function has returned; a stopped trial still
    # closes its MLflow run first, which can take longer than Tune's default wait of 2 s.
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = "120"
    trial_id = tune.get_context().get_trial_id()
    values = {p.name: config[p.name] for p in params}
    tspec = with_values(spec, {p.path: config[p.name] for p in params})
    (tjob,) = [j for j in plan(tspec) if (j.size, j.budget, j.seed) == (job.size, job.budget, job.seed)]
    run_id = f"{tune_name}-{trial_id}"
    tjob = dataclasses.replace(tjob, run_id=run_id, workdir=str(Path(folder) / run_id))
    runner = TrialRunner(tspec, tjob, parent, tune_name, values)
    try:
        runner()
    except TrialStopped as e:
        log.info("%s: %s", run_id, e)
        raise SystemExit(0) from None  # what Tune expects of a stopped trial (returning would hang it)
    if getattr(runner.runlog, "stopped", False):
        raise SystemExit(0)


def _distribution(p: SearchParam) -> Any:
    from ray import tune

    lo, hi = p.values[0], p.values[-1]
    return {"log": lambda: tune.loguniform(lo, hi), "uniform": lambda: tune.uniform(lo, hi),
            "int": lambda: tune.randint(int(lo), int(hi) + 1), "logint": lambda: tune.lograndint(int(lo), int(hi) + 1),
            "choice": lambda: tune.choice(list(p.values)), "grid": lambda: tune.grid_search(list(p.values))}[p.kind]()


def run_trials(spec: Spec, job: Job, params: Sequence[SearchParam], *, tune_name: str, parent: str, folder: Path,
               samples: int, grace: int | None = None, reduction: float = 3, seed: int = 0,
               max_concurrent: int | None = None, max_retries: int = 1, address: str | None = None,
               num_cpus: int | None = None) -> list[Trial]:
    """Run the search (connecting to `address`, or starting a local Ray with `num_cpus`); one Trial each."""
    import_ray()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    res = job.resources
    if ranks(res) > 1:
        raise LaunchError(f"a trial is one process, but size {job.size} asks for {ranks(res)} (nodes × tasks per "
                          f"node); tune a size that fits one process, or set launch.resources.{job.size} to one node "
                          "and one task")
    per_trial = {"cpu": res.cpus or 1, "gpu": res.gpus or 0}
    grace = grace or min(spec.train.eval_every, job.steps)
    scheduler = ASHAScheduler(time_attr="step", max_t=job.steps, grace_period=grace, reduction_factor=reduction)
    trainable = tune.with_resources(tune.with_parameters(trial, spec=spec, job=job, params=list(params),
                                                         tune_name=tune_name, parent=parent, folder=str(folder)),
                                    per_trial)
    tuner = tune.Tuner(
        trainable,
        param_space={p.name: _distribution(p) for p in params},
        tune_config=tune.TuneConfig(metric="liw", mode="min", scheduler=scheduler, num_samples=samples,
                                    search_alg=BasicVariantGenerator(random_state=seed),
                                    max_concurrent_trials=max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=tune_name, storage_path=str(folder / "ray"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_retries)),
    )
    with ray_session(address or address_of(spec), num_cpus):
        log.info("tune %s: %d samples of size %s, %d steps each, ASHA from step %d (÷%g), %s per trial",
                 tune_name, samples, job.size, job.steps, grace, reduction, per_trial)
        grid = tuner.fit()
    trials = []
    for result in grid:
        metrics = _last_result(Path(result.path)) or result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        step, liw = metrics.get("step"), metrics.get("liw")
        if result.error is not None:
            status = "FAILED"
        elif step is not None and step >= job.steps:
            status = "FINISHED"
        else:
            status = "STOPPED"
        values = {p.name: result.config[p.name] for p in params}
        trials.append(Trial(trial_id, f"{tune_name}-{trial_id}", status, None if step is None else int(step),
                            None if liw is None or not math.isfinite(liw) else float(liw), values,
                            None if result.error is None else str(result.error).strip().splitlines()[-1][:500]))
    return trials


def _last_result(trial_dir: Path) -> dict | None:
    """The last result a trial reported, from its `result.json` (one JSON object per line).

    Read from disk: with reused actors the in-memory `ResultGrid` can hold an earlier result of a trial."""
    try:
        lines = [line for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    except OSError:
        return None
    return json.loads(lines[-1]) if lines else None
