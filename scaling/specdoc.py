"""Generate the sweep-file reference (docs/sweep-reference.md) from the spec dataclasses.

The documentation of each field is the string under it in `scaling/spec.py`; this module reads those
strings with `ast` (Python keeps no attribute docstrings at run time) so the reference cannot drift
from the code. `scaling spec-doc` prints it; a test checks the committed file is current.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect

from scaling import spec as spec_module
from scaling.schema import yaml_fields

SECTIONS = [  # (YAML key, dataclass), in the order a sweep file is usually written
    ("", spec_module.Spec),
    ("model", spec_module.ModelSpec),
    ("model.sizes.<name>", spec_module.SizeSpec),
    ("data", spec_module.DataSpec),
    ("train", spec_module.TrainSpec),
    ("train.optimizer", spec_module.OptimizerSpec),
    ("train.schedule", spec_module.ScheduleSpec),
    ("diffusion", spec_module.DiffusionSpec),
    ("evaluation", spec_module.EvalSpec),
    ("launch", spec_module.LaunchSpec),
    ("launch.resources.<default|size>", spec_module.Resources),
    ("tracking", spec_module.TrackingSpec),
    ("fit", spec_module.FitSpec),
]


def field_docs(cls: type) -> dict[str, str]:
    """`{field: docstring}` for the string literals placed under a dataclass's fields."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value in ((), ""):
        return "`[]`" if value == () else '`""`'
    if isinstance(value, tuple):
        value = "[" + ", ".join(v.label if hasattr(v, "label") else str(v) for v in value) + "]"
    elif isinstance(value, (spec_module.Weighting, spec_module.Budget)):
        value = value.label
    elif dataclasses.is_dataclass(value):
        return "(see below)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`" if value != {} else "{}"


def render() -> str:
    lines = [
        "# Sweep file reference",
        "",
        "Generated from `scaling/spec.py` by `scaling spec-doc`; do not edit by hand.",
        "Every key is optional unless marked required; unknown keys are rejected with the list of valid ones.",
        "Weightings (`diffusion.sampler`, `diffusion.weighting`, `evaluation.weightings`) are a name or",
        "`{name: ..., <param>: ...}`; names and parameters with defaults:",
        "",
    ]
    for name, params in spec_module.WEIGHTINGS.items():
        shown = ", ".join(f"{k}={v:g}" for k, v in params.items()) or "no parameters"
        lines.append(f"- `{name}`: {shown}")
    lines.append("")
    for key, cls in SECTIONS:
        docs = field_docs(cls)
        title = f"`{key}`" if key else "top level"
        lines += [f"## {title}", "", " ".join((cls.__doc__ or "").split()), "",
                  "| key | default | meaning |", "|---|---|---|"]
        for f in yaml_fields(cls):
            lines.append(f"| `{f.name}` | {_default(f)} | {docs.get(f.name, '')} |")
        lines.append("")
    return "\n".join(lines)
