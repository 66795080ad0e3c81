"""Sweep specification: a YAML file -> frozen, typed dataclasses.

A sweep names a model family and its sizes, the data, the training budget, the diffusion and evaluation
settings, where jobs run and where results are tracked. `load_sweep(path)` is the only way in: it
validates every key, and every mistake raises one `SpecError` that names the dotted path of the key
(`model.sizes.M.width: expected an integer, got 'abc'`) and, for unknown keys or choices, the valid ones.

Each field's docstring (the string under it) is its documentation; `docs/sweep-reference.md` is generated
from the same dataclasses by `scaling spec-doc`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from scaling.errors import SpecError
from scaling.schema import convert, describe, parse

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Names that become paths, job names or MLflow keys: letters, digits, `_ . -`, no `..`, no shell chars."""

# Weightings w(λ) and training λ samplers, by name, with their parameters and defaults.
# The formulas live in `scaling.diffusion`; this table is what a sweep may name.
WEIGHTINGS: dict[str, dict[str, float]] = {
    "laplace": {"mu": 0.0, "b": 0.5},  # Hang & Gu 2024: exp(-|λ-μ|/b) / 2b
    "uniform": {"lo": -10.0, "hi": 10.0},  # flat in λ on [lo, hi]
    "min_snr": {"gamma": 5.0},  # Hang et al. 2023, on the ε loss: min(1, γ·e^-λ)
    "edm": {"p_mean": -1.2, "p_std": 1.2, "sigma_data": 0.5},  # Karras et al. 2022
    "logit_normal": {"m": 0.0, "s": 1.0},  # SD3, Esser et al. 2024
    "cosine": {},  # Nichol & Dhariwal 2021: density of λ under the cosine schedule
}
SAMPLERS = ("laplace", "uniform", "edm", "logit_normal", "cosine")
"""Weightings that are proper densities over λ and can be sampled for training."""


def check_name(value: str, path: str, what: str = "name") -> str:
    """Return `value` if it is safe as a path component and job name, else raise `SpecError`."""
    if not isinstance(value, str) or not SAFE_NAME.match(value) or ".." in value:
        raise SpecError(
            f"{what} {value!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (no '..', '/', spaces or shell characters)",
            path,
        )
    return value


@dataclass(frozen=True)
class Weighting:
    """A named weighting w(λ) (or λ density) with its parameters; YAML: `laplace` or `{name: laplace, b: 1}`."""

    name: str
    params: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, value: Any, path: str) -> Weighting:
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict) or "name" not in value:
            raise SpecError(f"expected a weighting name or a mapping with 'name', got {value!r}", path)
        name = value["name"]
        if name not in WEIGHTINGS:
            raise SpecError(f"unknown weighting {name!r}; valid: {', '.join(WEIGHTINGS)}", f"{path}.name")
        params = dict(WEIGHTINGS[name])
        for key, raw in value.items():
            if key == "name":
                continue
            if key not in params:
                valid = ", ".join(params) or "none"
                raise SpecError(f"unknown parameter {key!r} for weighting {name!r}; valid: {valid}", f"{path}.{key}")
            params[key] = convert(float, raw, f"{path}.{key}")
        return cls(name, types.MappingProxyType(params))

    @property
    def label(self) -> str:
        """The name with any non-default parameters, e.g. `laplace` or `laplace_b1`."""
        extra = [f"{k}{v:g}" for k, v in self.params.items() if WEIGHTINGS[self.name][k] != v]
        return "_".join([self.name, *extra])


@dataclass(frozen=True)
class Budget:
    """How long each size trains. YAML: `600` or `600steps` (steps), `2xC` (a multiple of the
    compute-optimal token count, `train.tokens_per_param` tokens per parameter), `1e15flops`."""

    kind: Literal["steps", "xC", "flops"]
    value: float

    @classmethod
    def from_yaml(cls, value: Any, path: str) -> Budget:
        if isinstance(value, bool):
            raise SpecError(f"expected a budget like 600, '2xC' or '1e15flops', got {value!r}", path)
        if isinstance(value, int) and value > 0:
            return cls("steps", value)
        text = str(value).strip()
        forms = ((r"(\d+)\s*(?:steps)?", "steps"), (r"([0-9.]+)\s*xC", "xC"), (r"([0-9.eE+]+)\s*flops", "flops"))
        for pattern, kind in forms:
            match = re.fullmatch(pattern, text)
            if match:
                try:
                    number = float(match.group(1))
                except ValueError:
                    break
                if number > 0 and math.isfinite(number):
                    return cls(kind, int(number) if kind == "steps" else number)  # type: ignore[arg-type]
        raise SpecError(f"expected a budget like 600, '600steps', '2xC' or '1e15flops', got {value!r}", path)

    @property
    def label(self) -> str:
        """The budget as it appears in run ids: `600steps`, `2xC`, `1e+15flops`."""
        if self.kind == "steps":
            return f"{int(self.value)}steps"
        if self.kind == "xC":
            return f"{self.value:g}xC"
        return f"{self.value:g}flops"


@dataclass(frozen=True)
class SizeSpec:
    """One model size of the family (DiT naming: depth blocks of width channels)."""

    depth: int
    "Number of transformer blocks."
    width: int
    "Hidden size D of every block."
    heads: int
    "Attention heads; must divide `width`."
    patch: int = 2
    "Patch size p: the image is cut into (image_size/p)² tokens."
    lr: float | None = None
    "This size's learning rate, overriding `train.optimizer.lr` (written by `scaling tune`)."
    micro_batch_size: int | None = None
    "This size's `train.micro_batch_size` (a large size fits fewer samples per pass on a GPU)."


@dataclass(frozen=True)
class ModelSpec:
    """The model family and its sizes."""

    sizes: Mapping[str, SizeSpec]
    "Sizes by name, smallest first (S, M, L, XL, ...). Names appear in run ids."
    family: Literal["dit"] = "dit"
    "The built-in family: a DiT-style diffusion transformer with adaLN-Zero conditioning on λ."
    num_classes: int = 0
    "Class-conditional with this many classes (a learned null class is added); 0 = unconditional."
    mlp_ratio: int = 4
    "Hidden size of each block's MLP, as a multiple of the width."
    frequency_dim: int = 256
    "Size of the sinusoidal embedding of λ before its MLP."
    learn_sigma: bool = False
    "Predict a variance too (doubles the output channels; DiT-XL/2's published 675M count includes it)."


@dataclass(frozen=True)
class DataSpec:
    """Training images and the held-out evaluation images (always disjoint from training)."""

    source: Literal["shapes", "digits", "npz", "folder"] = "shapes"
    "shapes: procedural images made from their index (infinite); digits: scikit-learn's 8×8 digits; npz/folder: yours."
    path: str | None = None
    "File (.npz with an array `images`, optional `labels`) or image folder, for source npz/folder."
    image_size: int = 16
    "Images are resized to image_size × image_size."
    channels: int = 1
    "Image channels (1 grey, 3 RGB)."
    seed: int = 0
    "Seed of the data order (and of the procedural generator)."


@dataclass(frozen=True)
class OptimizerSpec:
    """AdamW and its learning rate."""

    lr: float = 1e-3
    "Peak learning rate (per-size `model.sizes.X.lr` overrides it)."
    betas: tuple[float, ...] = (0.9, 0.999)
    "AdamW betas."
    weight_decay: float = 0.0
    "Decoupled weight decay."
    grad_clip: float | None = 1.0
    "Clip the global gradient norm to this; null = no clipping."
    lr_scale: Literal["none", "mup"] = "none"
    "mup: scale each size's lr by base_width / width (μP-style transfer from the tuned size)."
    base_width: int | None = None
    "Width at which `lr` was tuned, for lr_scale: mup (default: the first size's width)."


@dataclass(frozen=True)
class ScheduleSpec:
    """Learning-rate schedule: a pure function of the step."""

    name: Literal["constant", "cosine", "linear"] = "cosine"
    "Decay after warm-up: none, cosine or linear down to min_lr_ratio × lr."
    warmup_steps: int = 0
    "Linear warm-up from 0."
    min_lr_ratio: float = 0.1
    "Final learning rate as a fraction of the peak."


@dataclass(frozen=True)
class TrainSpec:
    """Training budget and loop settings."""

    budget: tuple[Budget, ...] = (Budget("steps", 1000),)
    "One budget or a list (N-data sweeps): 600 or '600steps' (steps), '2xC' (× compute-optimal tokens), '1e15flops'."
    batch_size: int = 64
    "Global batch size (split over data-parallel ranks)."
    micro_batch_size: int | None = None
    """Samples per forward/backward pass on each rank: a rank's share of the batch (batch_size / ranks) is
    accumulated over share / micro_batch_size passes per optimizer step, with the same gradient (gradient
    accumulation; DDP all-reduces once, after the last pass). null, or a share no larger: the whole share in one
    pass. Per size: `model.sizes.X.micro_batch_size`."""
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    "Optimizer settings."
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    "Learning-rate schedule."
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    "auto: bf16 autocast on GPU, fp32 on CPU."
    compile: bool = False
    "torch.compile the model on GPU (on CPU only with SCALING_COMPILE_BACKEND set; it does not pay off there)."
    seeds: tuple[int, ...] | Mapping[str, tuple[int, ...]] = (0,)
    """One job per seed and size: a list for every size, or lists per size with a default, e.g. `{default: [0, 1],
    S: [0, 1, 2, 3]}` (more seeds where runs are cheap and vary most)."""
    eval_every: int = 100
    "Evaluate the importance-weighted loss every this many steps (and at the end)."
    ckpt_every: int = 100
    "Checkpoint every this many steps (and on a stop signal, and at the end)."
    log_every: int = 10
    "Log the training loss every this many steps."
    tokens_per_param: float = 20.0
    "Tokens per parameter of a 1xC budget (Chinchilla: 20); a token is one image patch."
    threads: int | None = None
    "torch threads per process (default: the job's CPUs)."


@dataclass(frozen=True)
class DiffusionSpec:
    """How the training loss is formed."""

    prediction: Literal["eps", "v"] = "eps"
    "What the network predicts: the noise ε or the velocity v = α·ε - σ·x."
    sampler: Weighting = field(default_factory=lambda: Weighting.from_yaml("laplace", "diffusion.sampler"))
    "Density of training λ; one of: laplace, uniform, edm, logit_normal, cosine."
    weighting: Weighting | None = None
    "Target weighting of the training loss; the loss carries w/p to stay unbiased. null: the sampler's own."


def _default_weightings() -> tuple[Weighting, ...]:
    names = ("laplace", "uniform", "min_snr", "edm", "logit_normal")
    return tuple(Weighting.from_yaml(n, "evaluation.weightings") for n in names)


@dataclass(frozen=True)
class EvalSpec:
    """The importance-weighted evaluation: fixed λ grid, fixed held-out images, fixed noise."""

    lambda_min: float = -10.0
    "Lowest λ of the grid."
    lambda_max: float = 10.0
    "Highest λ of the grid."
    lambda_step: float = 0.25
    "Grid spacing Δλ; must resolve the narrowest weighting (Laplace b=0.5)."
    samples: int = 256
    "Held-out images (fixed, disjoint from training)."
    noise_seed: int = 1234
    "Seed of the evaluation noise (per image and level, the same for every size and every evaluation)."
    batch_size: int = 256
    "Images × levels per forward pass; does not change the result."
    weightings: tuple[Weighting, ...] = field(default_factory=_default_weightings)
    "Weightings reported (each as eval/iw/<name>)."
    primary: str = "laplace"
    "The weighting whose L_iw is fitted by default."


@dataclass(frozen=True)
class Resources:
    """Per-job resources. Unset fields inherit from `launch.resources.default`, then the cluster profile."""

    gpus: int | None = None
    "GPUs per node."
    nodes: int | None = None
    "Nodes per job."
    tasks_per_node: int | None = None
    "Tasks per node (default: one per GPU, or 1)."
    cpus: int | None = None
    "CPUs per task."
    mem_gb: float | None = None
    "Memory per node, GiB."
    time_min: int | None = None
    "Time limit in minutes (whole minutes)."
    partition: str | None = None
    "SLURM partition."
    account: str | None = None
    "SLURM account."
    qos: str | None = None
    "SLURM QOS."
    constraint: str | None = None
    "SLURM constraint (e.g. a GPU type)."
    array_parallelism: int | None = None
    "At most this many array tasks of the group at once."
    extra_sbatch: tuple[str, ...] | None = None
    "Free-form extra sbatch lines, e.g. '--exclusive' or '#SBATCH --reservation=x'."

    def over(self, base: Resources) -> Resources:
        """These resources with unset fields taken from `base`."""
        return Resources(**{f.name: getattr(base, f.name) if getattr(self, f.name) is None else getattr(self, f.name)
                            for f in dataclasses.fields(self)})


LOCAL_DEFAULTS = Resources(gpus=0, nodes=1, tasks_per_node=None, cpus=1, mem_gb=4, time_min=60, extra_sbatch=())


@dataclass(frozen=True)
class LaunchSpec:
    """Where the jobs run."""

    backend: Literal["local", "slurm", "ray"] = "local"
    "local: subprocesses on this machine; slurm: submitit job arrays; ray: tasks on a Ray cluster."
    max_parallel: int = 2
    "local backend: jobs at once."
    resources: Mapping[str, Resources] = field(default_factory=dict)
    "`default:` and per-size overrides, e.g. `{default: {gpus: 1}, XL: {gpus: 8, nodes: 2}}`."
    cluster: str | None = None
    "SLURM cluster profile: slurm/<cluster>.yaml (partitions, accounts, defaults)."
    max_requeues: int = 3
    "Requeues allowed per job on preemption or time limit."
    ray_address: str | None = None
    "Ray cluster address (default: RAY_ADDRESS, else a local Ray started for the sweep)."
    workdir: str = "runs"
    "Folder of checkpoints and logs: <workdir>/<sweep>/<run id>/ (on a shared filesystem for SLURM)."


@dataclass(frozen=True)
class TrackingSpec:
    """Where metrics go."""

    uri: str | None = None
    "MLflow tracking URI; null: sqlite:///<current dir>/mlflow.db (embedded, no server)."
    experiment: str | None = None
    "MLflow experiment (default: the sweep name)."


@dataclass(frozen=True)
class FitSpec:
    """What `scaling fit` does by default."""

    laws: tuple[str, ...] = ("power", "power_offset")
    "Laws fitted over the x axis (see `scaling.laws`)."
    x: Literal["params", "flops", "samples", "steps"] = "params"
    "The x axis of the size law."
    holdout: tuple[str, ...] = ()
    "Sizes held out as the target of the backtest; empty: the largest (last) size, e.g. XL."
    metric: str | None = None
    "Metric fitted (default: eval/iw/<evaluation.primary>)."
    bootstrap: int = 1000
    "Bootstrap resamples for the intervals."
    loss: Literal["huber", "squares"] = "huber"
    "Objective on log residuals: 'huber' (robust to an outlying run) or 'squares' (least squares)."
    delta: float = 1e-3
    ("Huber δ on log residuals (1e-3 as in Hoffmann et al. 2022). Far below the spread between the runs of a size, "
     "Huber is an L1 fit: with an even number of runs per size and a law that can pass through every size (as many "
     "parameters as sizes) its optimum is not unique and the fit warns; use 'squares' or a δ near the spread.")
    target_error: float | None = None
    ("The accuracy the sweep aims for: the report states, for each size law, whether it predicted each held-out "
     "size within this relative error (0.02 = 2%) with the actual value inside the interval.")


@dataclass(frozen=True)
class Spec:
    """A whole sweep."""

    name: str
    "Sweep name: the MLflow experiment default and the first part of every run id."
    model: ModelSpec
    "The model family and its sizes."
    description: str = ""
    "Free text."
    data: DataSpec = field(default_factory=DataSpec)
    "Training and held-out data."
    train: TrainSpec = field(default_factory=TrainSpec)
    "Budget and training loop."
    diffusion: DiffusionSpec = field(default_factory=DiffusionSpec)
    "Training loss."
    evaluation: EvalSpec = field(default_factory=EvalSpec)
    "Importance-weighted evaluation."
    launch: LaunchSpec = field(default_factory=LaunchSpec)
    "Backend and resources."
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    "MLflow."
    fit: FitSpec = field(default_factory=FitSpec)
    "Fitting defaults."
    trainer: str | None = None
    "Your own training function as `module:function` instead of the built-in trainer (see docs/own-trainer.md)."
    include: tuple[str, ...] = ()
    "YAML files applied on top of this one, in order (paths relative to this file), e.g. a tuned overlay."
    source: str = field(default="", metadata={"yaml": False})
    "Path of the YAML file (set by `load_sweep`)."
    sha256: str = field(default="", metadata={"yaml": False})
    "SHA-256 of the YAML file and its includes (set by `load_sweep`)."

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def metric(self) -> str:
        return self.fit.metric or f"eval/iw/{self.evaluation.primary}"

    @property
    def holdout(self) -> tuple[str, ...]:
        """The sizes held out as the fit's target (`fit.holdout`, else the last size)."""
        return self.fit.holdout or (list(self.model.sizes)[-1],)

    def seeds_for(self, size: str) -> tuple[int, ...]:
        """The seeds of a size: `train.seeds`, or its entry there (else `default`) when that is a mapping."""
        seeds = self.train.seeds
        if isinstance(seeds, Mapping):
            return seeds[size] if size in seeds else seeds["default"]
        return seeds

    def micro_batch_for(self, size: str) -> int | None:
        """The micro-batch of a size: its own `micro_batch_size`, else `train.micro_batch_size` (None: whole)."""
        own = self.model.sizes[size].micro_batch_size
        return own if own is not None else self.train.micro_batch_size

    def resources_for(self, size: str, profile: Resources | None = None) -> Resources:
        """Resolved resources of a size: per-size, then `default`, then the profile, then local defaults."""
        res = self.launch.resources.get(size, Resources()).over(self.launch.resources.get("default", Resources()))
        if profile is not None:
            res = res.over(profile)
        return res.over(LOCAL_DEFAULTS)


def _check(spec: Spec) -> None:
    """Cross-field checks that types alone cannot express."""
    check_name(spec.name, "name", "sweep name")
    sizes = spec.model.sizes
    if not sizes:
        raise SpecError("at least one size is needed, e.g. {S: {depth: 4, width: 64, heads: 4}}", "model.sizes")
    positive = {
        "data.image_size": spec.data.image_size, "data.channels": spec.data.channels,
        "train.batch_size": spec.train.batch_size, "train.eval_every": spec.train.eval_every,
        "train.ckpt_every": spec.train.ckpt_every, "train.log_every": spec.train.log_every,
        "evaluation.samples": spec.evaluation.samples, "evaluation.batch_size": spec.evaluation.batch_size,
        "launch.max_parallel": spec.launch.max_parallel, "fit.bootstrap": spec.fit.bootstrap,
        "evaluation.lambda_step": spec.evaluation.lambda_step, "train.optimizer.lr": spec.train.optimizer.lr,
        "fit.delta": spec.fit.delta,
    }
    for name, size in sizes.items():
        check_name(name, f"model.sizes.{name}", "size name")
        for key in ("depth", "width", "heads", "patch"):
            positive[f"model.sizes.{name}.{key}"] = getattr(size, key)
        if size.width % max(size.heads, 1):
            raise SpecError(f"width {size.width} is not divisible by heads {size.heads}", f"model.sizes.{name}.heads")
        if spec.data.image_size % max(size.patch, 1):
            raise SpecError(f"data.image_size {spec.data.image_size} is not divisible by patch {size.patch}",
                            f"model.sizes.{name}.patch")
        if size.width % 2:
            raise SpecError("width must be even (sinusoidal positions)", f"model.sizes.{name}.width")
    for key, number in positive.items():
        if number <= 0:
            raise SpecError(f"must be positive, got {number}", key)
    for name, size in sizes.items():
        micro = spec.micro_batch_for(name)
        where = (f"model.sizes.{name}.micro_batch_size" if size.micro_batch_size is not None
                 else "train.micro_batch_size")
        if micro is not None and micro <= 0:
            raise SpecError(f"must be positive, got {micro} (null: the whole batch in one pass)", where)
        if micro is not None and micro < spec.train.batch_size and spec.train.batch_size % micro:
            raise SpecError(f"train.batch_size {spec.train.batch_size} is not a multiple of {micro}; choose a "
                            "micro_batch_size that divides each rank's share of the batch", where)
    if spec.fit.target_error is not None and not 0 < spec.fit.target_error < 1:
        raise SpecError(f"must be a relative error between 0 and 1 (0.02 = 2%), got {spec.fit.target_error}",
                        "fit.target_error")
    if spec.evaluation.lambda_max <= spec.evaluation.lambda_min:
        raise SpecError("lambda_max must be greater than lambda_min", "evaluation.lambda_max")
    if spec.data.source in ("npz", "folder") and not spec.data.path:
        raise SpecError(f"source {spec.data.source!r} needs data.path", "data.path")
    if spec.diffusion.sampler.name not in SAMPLERS:
        raise SpecError(f"{spec.diffusion.sampler.name!r} cannot be sampled; valid samplers: {', '.join(SAMPLERS)}",
                        "diffusion.sampler.name")
    names = [w.label for w in spec.evaluation.weightings]
    if len(set(names)) != len(names):
        raise SpecError(f"weightings repeat: {names}", "evaluation.weightings")
    if spec.evaluation.primary not in names:
        raise SpecError(f"{spec.evaluation.primary!r} is not among the weightings {names}", "evaluation.primary")
    for key in spec.launch.resources:
        if key != "default" and key not in sizes:
            raise SpecError(f"unknown size {key!r}; valid: default, {', '.join(sizes)}", f"launch.resources.{key}")
    if isinstance(spec.train.seeds, Mapping):
        for key in spec.train.seeds:
            if key != "default" and key not in sizes:
                raise SpecError(f"unknown size {key!r}; valid: default, {', '.join(sizes)}", f"train.seeds.{key}")
        if "default" not in spec.train.seeds:
            missing = [name for name in sizes if name not in spec.train.seeds]
            if missing:
                raise SpecError(f"no seeds for size {missing[0]}; list it or add default: [0]", "train.seeds")
    for name in sizes:
        seeds = spec.seeds_for(name)
        where = "train.seeds" + (f".{name if name in spec.train.seeds else 'default'}"
                                 if isinstance(spec.train.seeds, Mapping) else "")
        if not seeds:
            raise SpecError("at least one seed is needed, e.g. [0]", where)
        if len(set(seeds)) != len(seeds):
            raise SpecError(f"seeds repeat: {list(seeds)} (each seed is one run)", where)
    for i, size in enumerate(spec.fit.holdout):
        if size not in sizes:
            raise SpecError(f"unknown size {size!r}; valid: {', '.join(sizes)}", f"fit.holdout[{i}]")
    if spec.trainer is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec.trainer):
        raise SpecError(f"expected 'module:function', got {spec.trainer!r}", "trainer")
    if spec.launch.cluster is not None:
        check_name(spec.launch.cluster, "launch.cluster", "cluster profile")
    check_name(spec.experiment, "tracking.experiment", "experiment")


def _merge(base: dict, top: dict) -> dict:
    """Deep-merge mapping `top` over `base` (lists and scalars replace)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(path: Path, source: str) -> tuple[dict, bytes]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SpecError(f"cannot read sweep file: {e.strerror}; check the path", source=str(path)) from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"not valid YAML{where}: {problem}", source=source) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"the top level must be a mapping (name, model, ...), got {describe(data)}", source=source)
    return data, raw


def parse_sweep(data: dict, source: str = "<sweep>", sha256: str = "") -> Spec:
    """Validate an already-loaded mapping into a `Spec`."""
    spec = parse(Spec, data, source, _check)
    return dataclasses.replace(spec, source=source, sha256=sha256)


def load_sweep(path: str | Path, overrides: dict | None = None) -> Spec:
    """Load and validate a sweep file (and its `include` overlays, then `overrides`)."""
    path = Path(path)
    data, raw = _read_yaml(path, str(path))
    digest = hashlib.sha256(raw)
    includes = data.get("include") or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        raise SpecError("expected a list of YAML files", "include", str(path))
    for i, name in enumerate(includes):
        if not isinstance(name, str):
            raise SpecError(f"expected a file name, got {describe(name)}", f"include[{i}]", str(path))
        extra_path = path.parent / name
        extra, extra_raw = _read_yaml(extra_path, str(extra_path))
        extra.pop("include", None)
        data = _merge(data, extra)
        digest.update(extra_raw)
    if overrides:
        data = _merge(data, overrides)
    return parse_sweep(data, str(path), digest.hexdigest())


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A spec (or any dataclass/mapping) as a flat `{'train.optimizer.lr': 0.001, ...}` dict."""
    out: dict[str, Any] = {}
    if isinstance(obj, Weighting):
        return {prefix: obj.label}
    if isinstance(obj, Budget):
        return {prefix: obj.label}
    if dataclasses.is_dataclass(obj):
        items = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    elif isinstance(obj, Mapping):
        items = list(obj.items())
    else:
        return {prefix: obj}
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, tuple) and not any(dataclasses.is_dataclass(v) for v in value):
            out[name] = ",".join(map(str, value))
        elif isinstance(value, tuple):
            out[name] = ",".join(flatten(v, "")[""] if isinstance(v, (Weighting, Budget)) else str(v) for v in value)
        else:
            out.update(flatten(value, name))
    return out
