"""Laws: declarations, formulas, vectorized evaluation; fit and laws import no training stack."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from scaling.errors import FitError
from scaling.laws import LAWS, Law, evaluate, format_number, get_law

from .conftest import REPO


@pytest.mark.parametrize("name", sorted(LAWS))
def test_law_declaration_is_consistent(name):
    law = LAWS[name]
    assert law.name == name
    for p in law.params:
        assert p.lower < p.upper
        if p.log:
            assert p.lower > 0
        lo, hi = p.bounds
        assert all(lo <= g <= hi for g in p.grid), p.name
        if p.scales:
            assert p.scales[0] in law.inputs
            assert isinstance(p.scales[1], float) or p.scales[1] in law.names
    grid = law.grid()
    assert grid.shape == (int(np.prod([len(p.grid) for p in law.params])), len(law.params))
    symbolic = law.formula()
    assert all(p.name in symbolic for p in law.params)
    assert "<" not in law.formula(latex=True)


@pytest.mark.parametrize("name", sorted(LAWS))
def test_evaluate_broadcasts_a_grid_and_matches_the_natural_call(name):
    law = LAWS[name]
    X = np.array([[1e6, 3e7, 2e9]] * len(law.inputs))
    grid = law.grid()[:7]
    v = evaluate(law, X, grid)
    assert v.shape == (7, 3)
    values = {p.name: float(p.to_value(t)) for p, t in zip(law.params, grid[3])}
    np.testing.assert_allclose(v[3], law(*X, **values), rtol=1e-12)


def test_reference_formulas_print_like_the_reference():
    assert get_law("power").formula({"a": 0.369, "b": 0.03}) == "y = 0.369·x^-0.030"
    assert get_law("power_offset").formula({"E": 0.303, "a": 1.4e5, "b": 0.14}) == "y = 0.303 + 1.4e5·x^-0.140"
    assert get_law("power_offset").formula({"E": 0.303, "a": 1.4e5, "b": 0.14}, latex=True) == \
        r"y = 0.303 + 1.4\times10^{5}\,x^{-0.140}"
    assert format_number(2.5e-5) == "2.5e-5"
    assert format_number(406.4) == "406.4"
    assert format_number(1.04) == "1.040"


def test_chinchilla_and_kaplan_values():
    chin = get_law("chinchilla")
    assert chin(1e9, 2e10, E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28) == pytest.approx(
        1.69 + 406.4 / 1e9 ** 0.34 + 410.7 / 2e10 ** 0.28)
    kap = get_law("kaplan_ns")
    assert kap(1e8, 1e4, N_c=8.8e13, alpha_N=0.076, S_c=2.1e3, alpha_S=0.76) == pytest.approx(
        (8.8e13 / 1e8) ** 0.076 + (2.1e3 / 1e4) ** 0.76)


def test_unknown_law_and_missing_parameter_name_the_valid_ones():
    with pytest.raises(FitError, match="known laws: power, power_offset"):
        get_law("powr")
    with pytest.raises(FitError, match=r"missing parameters \['b'\]"):
        get_law("power")(1.0, a=1.0)


def test_law_is_a_frozen_declaration():
    with pytest.raises(AttributeError):
        get_law("power").name = "x"  # type: ignore[misc]
    assert isinstance(get_law("power"), Law)


def test_fit_and_laws_import_no_training_stack():
    code = ("import sys, scaling.laws, scaling.fit, scaling.fit.partial, scaling.fit.text; "
            "bad = [m for m in ('torch', 'submitit', 'mlflow', 'ray') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "[]"
