"""SLURM cluster profiles: `slurm/<name>.yaml` -> a frozen, validated `ClusterProfile`; and what a
profile plus a job's resources become as sbatch options (`sbatch_parameters`).

A profile says what every sweep on that cluster shares (partitions, account, GPU type, default resources,
the shell set-up of a job), so a sweep only says `launch.cluster: <name>` (or `scaling submit --cluster
<name>`). `slurm/example.yaml` documents every key. Mistakes raise one `SpecError` naming the file and
the dotted key, like sweep files do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from scaling.errors import SpecError
from scaling.schema import describe, parse
from scaling.spec import Resources, check_name

PROFILE_PATH_ENV = "SCALING_SLURM_PROFILES"
"""Extra folders to search for profiles, separated by ':' (searched first)."""


@dataclass(frozen=True)
class ClusterProfile:
    """One SLURM cluster as `scaling submit` needs to know it."""

    description: str = ""
    "What this cluster is (free text)."
    partitions: tuple[str, ...] = ()
    "Partitions jobs may use; a job naming another is refused before submission. Empty: SLURM decides."
    gpu_type: str | None = None
    "GPU type requested as `--gpus-per-node=<type>:<n>` (e.g. a100, h100); null: any GPU."
    defaults: Resources = field(default_factory=Resources)
    "Resources every job gets unless its sweep sets them: partition, account, qos, time_min, cpus, mem_gb, ..."
    signal_delay_s: int = 120
    "SLURM sends USR2 this many seconds before the time limit; the job checkpoints and requeues itself."
    python: str | None = None
    "Python command on the compute nodes (default: the interpreter running `scaling submit`)."
    setup: tuple[str, ...] = ()
    "Shell lines the batch script runs before the job (module load ..., source venv/bin/activate, export ...)."
    srun_args: tuple[str, ...] = ()
    "Extra arguments to the srun that starts the job's tasks."
    max_array_size: int = 1000
    "Most tasks in one job array (SLURM's MaxArraySize - 1); larger groups are split into several arrays."
    name: str = field(default="", metadata={"yaml": False})
    "The profile's name (its file name without .yaml)."
    source: str = field(default="", metadata={"yaml": False})
    "The file it was read from."


def _check(profile: ClusterProfile) -> None:
    for i, part in enumerate(profile.partitions):
        check_name(part, f"partitions[{i}]", "partition")
    d = profile.defaults
    if profile.partitions and d.partition is not None and d.partition not in profile.partitions:
        raise SpecError(f"partition {d.partition!r} is not among partitions {list(profile.partitions)}",
                        "defaults.partition")
    if profile.gpu_type is not None and not profile.gpu_type.replace("-", "").replace("_", "").isalnum():
        raise SpecError(f"expected a GPU type like a100 or h100, got {profile.gpu_type!r}", "gpu_type")
    if profile.signal_delay_s < 0:
        raise SpecError(f"must be 0 or more, got {profile.signal_delay_s}", "signal_delay_s")
    if profile.max_array_size < 1:
        raise SpecError(f"must be positive, got {profile.max_array_size}", "max_array_size")
    check_resources(d, "defaults")


def check_resources(res: Resources, path: str) -> None:
    """Numbers that SLURM would refuse, caught before submission (`path` names the key)."""
    for key in ("gpus",):
        value = getattr(res, key)
        if value is not None and value < 0:
            raise SpecError(f"must be 0 or more, got {value}", f"{path}.{key}")
    for key in ("nodes", "tasks_per_node", "cpus", "time_min", "array_parallelism"):
        value = getattr(res, key)
        if value is not None and value < 1:
            raise SpecError(f"must be positive, got {value}", f"{path}.{key}")
    if res.mem_gb is not None and res.mem_gb <= 0:
        raise SpecError(f"must be positive, got {res.mem_gb}", f"{path}.mem_gb")


def parse_profile(data: object, name: str = "", source: str = "<profile>") -> ClusterProfile:
    """Validate an already-loaded mapping into a `ClusterProfile`."""
    return replace(parse(ClusterProfile, data, source, _check), name=name, source=source)


def search_dirs(sweep_source: str | Path | None = None) -> list[Path]:
    """Folders searched for `<name>.yaml`: $SCALING_SLURM_PROFILES, ./slurm, the sweep's ../slurm and
    ./slurm, and the `slurm/` folder of this source tree."""
    dirs = [Path(p) for p in os.environ.get(PROFILE_PATH_ENV, "").split(":") if p]
    dirs.append(Path.cwd() / "slurm")
    if sweep_source:
        here = Path(sweep_source).resolve().parent
        dirs += [here.parent / "slurm", here / "slurm"]
    dirs.append(Path(__file__).resolve().parents[2] / "slurm")
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def available(dirs: list[Path]) -> list[str]:
    """Profile names found in `dirs` (every *.yaml)."""
    return sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")})


def load_profile(name: str, sweep_source: str | Path | None = None) -> ClusterProfile:
    """The profile `name`: the first `<name>.yaml` in `search_dirs(sweep_source)`."""
    check_name(name, "launch.cluster", "cluster profile")
    dirs = search_dirs(sweep_source)
    found = [d / f"{name}.yaml" for d in dirs if (d / f"{name}.yaml").is_file()]
    if not found:
        names = ", ".join(available(dirs)) or "none"
        raise SpecError(f"no cluster profile {name!r}: looked for {name}.yaml in {', '.join(str(d) for d in dirs)}; "
                        f"profiles found: {names}. Copy slurm/example.yaml to slurm/{name}.yaml", "launch.cluster")
    path = found[0]
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(f"cannot read cluster profile: {e.strerror}", source=str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"not valid YAML{where}: {getattr(e, 'problem', None) or e}", source=str(path)) from None
    if data is not None and not isinstance(data, dict):
        raise SpecError(f"the top level must be a mapping of keys, got {describe(data)}", source=str(path))
    return parse_profile(data or {}, path.stem, str(path))


def mem_text(mem_gb: float) -> str:
    return f"{int(mem_gb)}G" if float(mem_gb).is_integer() else f"{round(mem_gb * 1024)}M"


def extra_options(lines: Sequence[str], where: str) -> dict[str, Any]:
    """Free-form sbatch lines (`--exclusive`, `#SBATCH --reservation=x`) -> {option: value or True}."""
    out: dict[str, Any] = {}
    for i, raw in enumerate(lines):
        text = raw.strip()
        text = text[len("#SBATCH"):].strip() if text.startswith("#SBATCH") else text
        m = re.fullmatch(r"--([a-z][a-z0-9-]*)(?:[= ](.+))?", text)
        if not m:
            raise SpecError(f"expected a long sbatch option like '--exclusive' or '--reservation=x', got {raw!r}",
                            f"{where}.extra_sbatch[{i}]")
        out[m.group(1)] = m.group(2).strip() if m.group(2) else True
    return out


def sbatch_parameters(res: Resources, profile: ClusterProfile, job_name: str, where: str) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one resource shape: one task per GPU (or `tasks_per_node`)."""
    gpus = res.gpus or 0
    params: dict[str, Any] = {
        "job_name": job_name, "time": int(res.time_min or 60), "nodes": int(res.nodes or 1),
        "ntasks_per_node": int(res.tasks_per_node or max(gpus, 1)), "cpus_per_task": int(res.cpus or 1),
        "signal_delay_s": profile.signal_delay_s,
    }
    if res.mem_gb:
        params["mem"] = mem_text(res.mem_gb)
    if gpus:
        params["gpus_per_node"] = f"{profile.gpu_type}:{gpus}" if profile.gpu_type else gpus
    for key in ("partition", "account", "qos", "constraint", "array_parallelism"):
        if getattr(res, key) is not None:
            params[key] = getattr(res, key)
    if profile.setup:
        params["setup"] = list(profile.setup)
    if profile.srun_args:
        params["srun_args"] = list(profile.srun_args)
    extra = extra_options(res.extra_sbatch or (), where)
    if extra:
        params["additional_parameters"] = extra
    return params
