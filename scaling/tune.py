"""`scaling tune`: a hyper-parameter search for one size, its results, and the overlay the sweep includes.

    scaling tune sweeps/demo.yaml --size S --search 'lr=log(1e-4,3e-3)' --search 'warmup=int(0,200)' --samples 16

Every trial trains the size with the built-in trainer (or the sweep's own) for the sweep's budget (or
`--steps`) and reports the primary L_iw (`eval/iw/<evaluation.primary>`) at each evaluation; the ASHA
scheduler stops the worse trials at steps grace·reduction^k. Trials are MLflow runs of the experiment
`<experiment>-tune`, nested under one parent run (tag `mlflow.parentRunId`), so the sweep's own table stays
clean and the MLflow UI compares the trials side by side.

Results: `<workdir>/<sweep>/<tune name>/results.csv` (trial, status, step, the searched values, final
L_iw) and `liw.png` (L_iw against each searched parameter), both also artifacts of the parent run; and
the best configuration merged into `<sweep stem>.tuned.yaml` next to the sweep, which the sweep takes in
with `include: [<stem>.tuned.yaml]`. With `train.optimizer.lr_scale: mup` the overlay sets the base `lr`
and `base_width` (the tuned size's width) so the other sizes get lr·base_width/width; otherwise it sets
`model.sizes.<size>.lr`. Search spaces, this module's only syntax, are parsed by `parse_search`.

This module never imports ray: the search itself is `scaling.launch.ray_tune`.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import logging
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scaling.errors import LaunchError, SpecError
from scaling.schema import convert
from scaling.spec import Budget, Spec, load_sweep

log = logging.getLogger(__name__)

ALIASES = {
    "warmup": ("train", "schedule", "warmup_steps"),
    "min_lr_ratio": ("train", "schedule", "min_lr_ratio"),
    "weight_decay": ("train", "optimizer", "weight_decay"),
    "grad_clip": ("train", "optimizer", "grad_clip"),
    "batch_size": ("train", "batch_size"),
}
"Short names for `--search`; `lr` is the tuned size's own `model.sizes.<size>.lr`; any dotted key works too."

KINDS = {
    "log": "log-uniform between two positive bounds",
    "uniform": "uniform between two bounds",
    "int": "a whole number between two bounds (both included)",
    "logint": "a whole number, log-uniform between two positive bounds (both included)",
    "choice": "one of the values listed",
    "grid": "every value listed (each sample runs the whole grid once)",
}
_SYNTAX = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*=\s*([a-z]+)\s*\((.*)\)\s*$")


@dataclass(frozen=True)
class SearchParam:
    """One searched hyper-parameter: `name=kind(values)`, e.g. `lr=log(1e-4,3e-3)`."""

    name: str
    "As written: `lr`, `warmup` or a dotted sweep key such as `train.optimizer.weight_decay`."
    path: tuple[str, ...]
    "The sweep key it sets."
    kind: str
    "One of KINDS."
    values: tuple[Any, ...]
    "(low, high) for ranges; the values for choice and grid."

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def log_scale(self) -> bool:
        numbers = [v for v in self.values if isinstance(v, (int, float))]
        return self.kind in ("log", "logint") or (
            len(numbers) == len(self.values) > 2 and min(numbers) > 0 and max(numbers) / min(numbers) >= 20)


def _number(text: str, where: str) -> int | float | str:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        if text.lower() in ("true", "false", "null"):
            return yaml.safe_load(text)
        if not text:
            raise SpecError(f"empty value in {where}") from None
        return text


def parse_search(text: str, size: str) -> SearchParam:
    """`lr=log(1e-4,3e-3)` -> SearchParam; `SpecError` with the valid forms if it does not parse."""
    forms = "; ".join(f"{k}(...): {v}" for k, v in KINDS.items())
    match = _SYNTAX.match(text)
    if not match:
        raise SpecError(f"cannot read {text!r}: expected NAME=KIND(VALUES), e.g. 'lr=log(1e-4,3e-3)' or "
                        f"'warmup=int(0,200)'; kinds: {forms}", "--search")
    name, kind, inner = match.groups()
    if kind not in KINDS:
        raise SpecError(f"unknown kind {kind!r} in {text!r}; valid: {forms}", "--search")
    values = tuple(_number(v, text) for v in inner.split(","))
    if kind in ("log", "uniform", "int", "logint"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or not values[0] < values[1]:
            raise SpecError(f"{kind}(low, high) needs two numbers with low < high, got {text!r}", "--search")
        if kind in ("log", "logint") and values[0] <= 0:
            raise SpecError(f"{kind} needs positive bounds, got {text!r}", "--search")
        if kind in ("int", "logint") and not all(float(v).is_integer() for v in values):
            raise SpecError(f"{kind} needs whole-number bounds, got {text!r}", "--search")
    elif len(set(values)) < 2:
        raise SpecError(f"{kind}(...) needs at least two different values, got {text!r}", "--search")
    if name == "lr":
        path = ("model", "sizes", size, "lr")
    else:
        path = ALIASES.get(name, tuple(name.split(".")))
    return SearchParam(name, path, kind, values)


def nested(path: Sequence[str], value: Any) -> dict:
    """`('a', 'b'), 1` -> `{'a': {'b': 1}}`."""
    out: Any = value
    for key in reversed(path):
        out = {key: out}
    return out


def check_space(sweep: str | Path, params: Sequence[SearchParam]) -> None:
    """Load the sweep with each bound or value of each parameter: a bad key or value raises `SpecError`."""
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise SpecError(f"a parameter is searched twice: {names}", "--search")
    for p in params:
        for value in p.values:
            try:
                load_sweep(sweep, overrides=nested(p.path, value))
            except SpecError as e:
                raise SpecError(f"--search {p.name}: {e}", "--search") from None


def _replace(obj: Any, path: Sequence[str], value: Any, where: str) -> Any:
    head, rest = path[0], path[1:]
    if isinstance(obj, Mapping):
        items = dict(obj)
        items[head] = _replace(items[head], rest, value, where) if rest else value
        return types.MappingProxyType(items)
    if rest:
        return dataclasses.replace(obj, **{head: _replace(getattr(obj, head), rest, value, where)})
    hint = typing.get_type_hints(type(obj))[head]
    return dataclasses.replace(obj, **{head: convert(hint, value, where)})


def with_values(spec: Spec, values: Mapping[tuple[str, ...], Any]) -> Spec:
    """The spec with each key path set to its value (paths checked by `check_space` beforehand)."""
    for path, value in values.items():
        spec = _replace(spec, path, value, ".".join(path))
    return spec


def with_steps(spec: Spec, steps: int | None, eval_every: int | None) -> Spec:
    """The spec with one `steps` budget and `eval_every`, where given (a tune's trials are often shorter)."""
    train = spec.train
    if steps is not None:
        train = dataclasses.replace(train, budget=(Budget("steps", int(steps)),))
    if eval_every is not None:
        train = dataclasses.replace(train, eval_every=int(eval_every))
    return dataclasses.replace(spec, train=train)


# --- results ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trial:
    """One trial's outcome."""

    trial: str
    "Ray Tune's trial id."
    run_id: str
    "The trial's run id (its MLflow run carries it as `scaling.run_id`)."
    status: str
    "FINISHED (all steps), STOPPED (by ASHA; its MLflow run is KILLED) or FAILED."
    step: int | None
    "Last reported step."
    liw: float | None
    "L_iw at that step."
    values: Mapping[str, Any]
    "Searched values by parameter name."
    error: str | None = None


def best_trial(trials: Sequence[Trial]) -> Trial:
    """The lowest final L_iw among the trials that ran all their steps (else among all that reported)."""
    scored = [t for t in trials if t.liw is not None and math.isfinite(t.liw)]
    finished = [t for t in scored if t.status == "FINISHED"]
    pool = finished or scored
    if not pool:
        errors = "; ".join(sorted({t.error or t.status for t in trials}))[:1000]
        raise LaunchError(f"no trial reported an L_iw ({errors}); see the trials' logs and results.csv")
    return min(pool, key=lambda t: t.liw)  # type: ignore[arg-type,return-value]


def write_table(trials: Sequence[Trial], params: Sequence[SearchParam], metric: str, path: Path) -> Path:
    """The result table as CSV: trial, run_id, status, step, one column per parameter, the metric, error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["trial", "run_id", "status", "step", *(p.name for p in params), metric, "error"])
        for t in sorted(trials, key=lambda t: (t.liw is None, t.liw if t.liw is not None else 0.0)):
            out.writerow([t.trial, t.run_id, t.status, "" if t.step is None else t.step,
                          *(t.values.get(p.name, "") for p in params), "" if t.liw is None else repr(t.liw),
                          t.error or ""])
    os.replace(tmp, path)
    return path


def plot_tune(trials: Sequence[Trial], params: Sequence[SearchParam], metric: str, title: str = ""):
    """A matplotlib Figure: final L_iw against each searched parameter (one panel each); finished trials
    filled, ASHA-stopped ones hollow (at the step they stopped), the best a star."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * len(params) + 0.6, 3.2), layout="constrained")
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    scored = [t for t in trials if t.liw is not None and math.isfinite(t.liw)]
    best = best_trial(trials) if scored else None
    for ax, p in zip(axes, params):
        numeric = all(isinstance(t.values.get(p.name), (int, float)) for t in scored)
        position = (lambda v: v) if numeric else (lambda v, order=[str(x) for x in p.values]: order.index(str(v)))
        for status, style in (("FINISHED", {"color": "C0"}), ("STOPPED", {"facecolors": "none", "edgecolors": "0.5"})):
            group = [t for t in scored if t.status == status]
            if group:
                ax.scatter([position(t.values[p.name]) for t in group], [t.liw for t in group], s=28,
                           label="finished" if status == "FINISHED" else "stopped early", **style)
        if best is not None:
            ax.scatter([position(best.values[p.name])], [best.liw], marker="*", s=160, color="C3", zorder=3,
                       label=f"best {p.name}={_fmt(best.values[p.name])}")
        if numeric and p.log_scale:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(p.values)), [str(v) for v in p.values])
        ax.set_xlabel(p.name)
        ax.set_ylabel(f"final {metric}")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_overlay(sweep: str | Path, spec: Spec, size: str, best: Mapping[tuple[str, ...], Any], note: str) -> Path:
    """Merge the best values into `<sweep stem>.tuned.yaml` next to the sweep; returns its path.

    The learning rate goes to `model.sizes.<size>.lr`, or, under `lr_scale: mup`, to the base
    `train.optimizer.lr` with `base_width` = this size's width (so every size gets lr·base_width/width)."""
    sweep = Path(sweep)
    path = sweep.with_name(f"{sweep.stem}.tuned.yaml")
    data: dict = {}
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise SpecError("the existing overlay is not a mapping; move it away and tune again", source=str(path))
    lr_path = ("model", "sizes", size, "lr")
    for key, value in best.items():
        value = value.item() if hasattr(value, "item") else value  # numpy scalars -> plain YAML
        if key == lr_path and spec.train.optimizer.lr_scale == "mup":
            _set(data, ("train", "optimizer", "lr"), value)
            _set(data, ("train", "optimizer", "base_width"), spec.model.sizes[size].width)
            sizes = data.get("model", {}).get("sizes", {})
            sizes.get(size, {}).pop("lr", None)
        else:
            _set(data, key, value)
    _prune(data)
    load_sweep(sweep, overrides=data)  # the overlay must give a valid sweep
    text = (f"# Written by `scaling tune` on {datetime.date.today()}: {note}\n"
            f"# Take it into the sweep with `include: [{path.name}]` in {sweep.name}.\n")
    text += yaml.safe_dump(data, sort_keys=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _set(data: dict, path: Sequence[str], value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


def _prune(data: dict) -> None:
    for key in list(data):
        if isinstance(data[key], dict):
            _prune(data[key])
            if not data[key]:
                del data[key]


# --- the whole tune -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TuneResult:
    """What `tune` did and where its outputs are."""

    name: str
    "The tune's name: its parent MLflow run's run id and its folder."
    size: str
    metric: str
    params: tuple[SearchParam, ...]
    trials: tuple[Trial, ...]
    best: Trial
    overlay: Path
    table: Path
    figure: Path
    experiment: str
    parent_run: str
    "MLflow run id of the parent run."
    url: str


def tune(sweep: str | Path, size: str, search: Sequence[str], samples: int = 16, *, steps: int | None = None,
         eval_every: int | None = None, grace: int | None = None, reduction: float = 3, seed: int = 0,
         max_concurrent: int | None = None, max_retries: int = 1, address: str | None = None,
         num_cpus: int | None = None, name: str | None = None) -> TuneResult:
    """Search `search` for size `size` of the sweep with Ray Tune and ASHA; see the module docstring."""
    from scaling.launch.ray_session import portable
    from scaling.plan import plan
    from scaling.spec import check_name
    from scaling.track import TAG_REASON, Tracker, log_artifact_file

    spec = load_sweep(sweep)
    if size not in spec.model.sizes:
        raise SpecError(f"unknown size {size!r}; valid: {', '.join(spec.model.sizes)}", "--size")
    if not search:
        raise SpecError("nothing to search: give at least one --search, e.g. 'lr=log(1e-4,3e-3)'", "--search")
    if samples < 1:
        raise SpecError(f"--samples must be at least 1, got {samples}", "--samples")
    params = tuple(parse_search(s, size) for s in search)
    check_space(sweep, params)
    spec = with_steps(portable(spec), steps, eval_every)
    workdir = Path(spec.launch.workdir)
    experiment = f"{spec.experiment}-tune"
    spec = dataclasses.replace(spec, tracking=dataclasses.replace(spec.tracking, experiment=experiment))
    name = check_name(name or f"{spec.name}-{size}-tune-{datetime.datetime.now():%Y%m%d-%H%M%S}", "--name", "tune name")
    job = next(j for j in plan(spec) if j.size == size)
    if spec.train.eval_every >= job.steps:
        log.warning("trials evaluate only at their last step (eval_every %d >= %d steps): ASHA cannot stop any "
                    "early; pass --eval-every", spec.train.eval_every, job.steps)
    metric = f"eval/iw/{spec.evaluation.primary}"
    folder = workdir / spec.name / name
    tracker = Tracker(spec.tracking.uri, experiment)
    parent = tracker.open_run(name, tags={"scaling.sweep": spec.name, "scaling.size": size, "scaling.tune": name},
                              params={"tune.search": "; ".join(search), "tune.samples": samples, "tune.metric": metric,
                                      "tune.steps": job.steps, "tune.eval_every": spec.train.eval_every,
                                      "tune.reduction": reduction, "tune.seed": seed, "tune.sweep": str(sweep)})
    try:
        from scaling.launch.ray_tune import run_trials

        trials = run_trials(spec, job, params, tune_name=name, parent=parent.mlflow_run_id, folder=folder,
                            samples=samples, grace=grace, reduction=reduction, seed=seed, max_concurrent=max_concurrent,
                            max_retries=max_retries, address=address, num_cpus=num_cpus)
        _settle(tracker, trials, TAG_REASON)
        table = write_table(trials, params, metric, folder / "results.csv")
        best = best_trial(trials)
        title = f"{spec.name} size {size}: {len(trials)} trials, {job.steps} steps"
        figure = folder / "liw.png"
        plot_tune(trials, params, metric, title).savefig(figure, dpi=120)
        values = ", ".join(f"{p.name}={_fmt(best.values[p.name])}" for p in params)
        note = (f"best of {len(trials)} trials for size {size}: {values} ({metric} = {best.liw:.5g} at step "
                f"{best.step})")
        overlay = write_overlay(sweep, spec, size, {p.path: best.values[p.name] for p in params}, note)
        parent.log(job.steps, {f"best/{metric}": best.liw, "tune/finished": sum(t.status == "FINISHED" for t in trials),
                               "tune/stopped": sum(t.status == "STOPPED" for t in trials)})
        parent.flush()
        for p in params:
            tracker.client.set_tag(parent.mlflow_run_id, f"tune.best.{p.name}", str(best.values[p.name]))
        for path in (table, figure, overlay):
            log_artifact_file(tracker, parent.mlflow_run_id, path)
    except BaseException as e:
        parent.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", f"{type(e).__name__}: {e}")
        raise
    parent.finish("FINISHED")
    log.info("tune %s: %s", name, note)
    return TuneResult(name, size, metric, params, tuple(trials), best, overlay, table, figure, experiment,
                      parent.mlflow_run_id, parent.url)


def _settle(tracker: Any, trials: Sequence[Trial], reason_tag: str) -> None:
    """Give each trial's MLflow run its final status: FINISHED, KILLED (stopped early by ASHA) or FAILED.

    Tune ends a trial's process once it stops it (ASHA also stops trials that reach max_t), so the
    run may still say RUNNING, or FAILED with Tune's SystemExit."""
    for t in trials:
        runs = tracker.find_runs(t.run_id)
        if not runs:
            continue
        run = runs[0]
        status, why = {"FINISHED": ("FINISHED", None),
                       "STOPPED": ("KILLED", f"stopped early by the ASHA scheduler at step {t.step}"),
                       "FAILED": ("FAILED", t.error or "failed")}[t.status]
        if run.info.status != status:
            if why:
                tracker.client.set_tag(run.info.run_id, reason_tag, why)
            tracker.client.set_terminated(run.info.run_id, status=status)
