"""Sweep spec loading: valid files load, every malformed file gives one clean SpecError."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scaling.errors import SpecError
from scaling.spec import Budget, load_sweep, parse_sweep

from .conftest import REPO, tiny_sweep_dict

SHIPPED = sorted((REPO / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_sweeps_load(path: Path):
    spec = load_sweep(path)
    assert spec.model.sizes, "a sweep needs sizes"
    assert len(spec.sha256) == 64
    assert spec.source == str(path)


def test_defaults_and_overrides():
    spec = parse_sweep(tiny_sweep_dict())
    assert spec.experiment == "tiny"
    assert spec.metric == "eval/iw/laplace"
    assert [w.name for w in spec.evaluation.weightings] == ["laplace", "uniform", "min_snr", "edm", "logit_normal"]
    assert spec.evaluation.weightings[0].params["b"] == 0.5  # Hang & Gu's default
    assert spec.train.budget == (Budget("steps", 6),)
    assert spec.diffusion.sampler.name == "laplace"


def test_yaml_reads_exponent_floats():
    # PyYAML reads `1e-3` (no dot) as a string; the spec accepts it as the number it is.
    text = "name: x\nmodel: {sizes: {S: {depth: 1, width: 8, heads: 1}}}\ntrain: {optimizer: {lr: 1e-3}}"
    data = yaml.safe_load(text)
    assert parse_sweep(data).train.optimizer.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("value, kind, amount, label", [
    (600, "steps", 600, "600steps"), ("600steps", "steps", 600, "600steps"), ("2xC", "xC", 2.0, "2xC"),
    ("0.5xC", "xC", 0.5, "0.5xC"), ("1e15flops", "flops", 1e15, "1e+15flops"),
])
def test_budget_forms(value, kind, amount, label):
    budget = Budget.from_yaml(value, "train.budget")
    assert (budget.kind, budget.value, budget.label) == (kind, amount, label)


@pytest.mark.parametrize("mutate, path, words", [
    (lambda d: d["model"]["sizes"]["M"].update(width="abc"), "model.sizes.M.width", "expected an integer, got 'abc'"),
    (lambda d: d.update(trian={}), "trian", "valid keys: name, model,"),
    (lambda d: d["train"].update(precision="fp8"), "train.precision", "expected one of auto, fp32, bf16"),
    (lambda d: d["model"]["sizes"]["S"].update(heads=3), "model.sizes.S.heads", "not divisible"),
    (lambda d: d.update(name="../evil"), "name", "not allowed"),
    (lambda d: d.update(name="a;rm -rf"), "name", "not allowed"),
    (lambda d: d["model"]["sizes"].update({"X L": {"depth": 1, "width": 8, "heads": 1}}), "model.sizes.X L",
     "not allowed"),
    (lambda d: d["fit"].update(holdout=["XXL"]), "fit.holdout[0]", "unknown size 'XXL'; valid: S, M, L"),
    (lambda d: d.update(evaluation={"weightings": ["laplace", "bogus"]}), "evaluation.weightings[1].name", "valid:"),
    (lambda d: d.update(diffusion={"sampler": "min_snr"}), "diffusion.sampler.name", "cannot be sampled"),
    (lambda d: d.update(evaluation={"weightings": [{"name": "laplace", "c": 1}]}), "evaluation.weightings[0].c",
     "valid: mu, b"),
    (lambda d: d["train"].update(budget="lots"), "train.budget[0]", "expected a budget"),
    (lambda d: d["train"].update(batch_size=0), "train.batch_size", "must be positive"),
    (lambda d: d["train"].update(micro_batch_size=0), "train.micro_batch_size", "must be positive"),
    (lambda d: d["train"].update(batch_size=8, micro_batch_size=3), "train.micro_batch_size",
     "train.batch_size 8 is not a multiple of 3"),  # (a micro-batch of 16, larger than the batch, is one pass)
    (lambda d: (d["train"].update(batch_size=8, micro_batch_size=4), d["model"]["sizes"]["L"].update(
        micro_batch_size=5)), "model.sizes.L.micro_batch_size", "not a multiple of 5"),
    (lambda d: d.update(launch={"resources": {"XXL": {"gpus": 1}}}), "launch.resources.XXL", "valid: default, S"),
    (lambda d: d.update(trainer="not a function"), "trainer", "module:function"),
    (lambda d: d.update(data={"source": "npz"}), "data.path", "needs data.path"),
    (lambda d: d.pop("model"), "model", "missing required key"),
    (lambda d: d["model"].update(sizes={}), "model.sizes", "at least one size"),
    (lambda d: d["train"].update(optimizer={"lr": float("nan")}), "train.optimizer.lr", "finite number"),
    (lambda d: d.update(sha256="x"), "sha256", "unknown key"),
])
def test_bad_input_names_the_key(mutate, path, words):
    data = tiny_sweep_dict()
    mutate(data)
    with pytest.raises(SpecError) as err:
        parse_sweep(data, source="sweep.yaml")
    assert err.value.path == path
    assert words in str(err.value)
    assert str(err.value).startswith(f"sweep.yaml: {path}: ")
    assert "\n" not in str(err.value)


def test_unreadable_and_invalid_yaml(tmp_path: Path):
    with pytest.raises(SpecError, match="cannot read sweep file"):
        load_sweep(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_sweep(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="top level must be a mapping"):
        load_sweep(bad)
    bad.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="not valid YAML"):  # safe_load: no arbitrary objects
        load_sweep(bad)


def test_include_overlay_applies_on_top(tmp_path: Path):
    base = tiny_sweep_dict(include=["tuned.yaml"])
    (tmp_path / "tuned.yaml").write_text("model: {sizes: {S: {lr: 0.0003}}}\ntrain: {batch_size: 16}\n")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = load_sweep(tmp_path / "base.yaml")
    assert spec.model.sizes["S"].lr == pytest.approx(3e-4)
    assert spec.model.sizes["S"].width == 16  # the rest of the size is kept
    assert spec.train.batch_size == 16
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(tiny_sweep_dict()))
    assert load_sweep(plain).sha256 != spec.sha256  # the overlay is part of the hash


# --- property-based: any malformed sweep yields a SpecError, never another exception --------------------

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(),
                                                                                 max_size=3),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _full_sweep() -> dict:
    return yaml.safe_load((REPO / "sweeps" / "demo.yaml").read_text())


ALL_PATHS = [p for p in _paths(_full_sweep()) if p]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), st.sampled_from(["set", "delete", "extra"]), JUNK),
                min_size=1, max_size=4))
def test_malformed_sweeps_give_clean_errors(edits):
    data = copy.deepcopy(_full_sweep())
    for path, action, junk in edits:
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            last = path[-1]
            if action == "set":
                node[last] = junk
            elif action == "delete" and isinstance(node, dict):
                node.pop(last, None)
            elif action == "extra" and isinstance(node, dict):
                node[f"zz_{last}"] = junk
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this part
    try:
        parse_sweep(data, source="fuzz.yaml")
    except SpecError as e:
        assert str(e).startswith("fuzz.yaml: ")
        assert "\n" not in str(e)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_clean_errors(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "s.yaml"
    path.write_text(text)
    try:
        load_sweep(path)
    except SpecError:
        pass
