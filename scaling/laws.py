"""Named scaling laws: a function, named bounded parameters, a formula, and a grid of initial guesses.

A law is one `Law(...)` declaration in `LAWS`; nothing else has to change to fit it. Its function takes
the inputs and the parameters as numpy arrays that broadcast against each other, so the fitter can
evaluate a whole grid of parameter vectors at once (`evaluate(law, X, theta)` with `theta` of shape
`(k, P)`) and its central differences in the same call. Write it with numpy operations that
broadcast (`+ - * / **`, `np.exp`, `np.log`).

Scale parameters (`log=True`: a, E, A, B, N_c, S_c) are fitted as their logarithm; exponents as they are.

| law | inputs | formula |
|---|---|---|
| `power` | x | L(x) = a·x^(−b) |
| `power_offset` | x | L(x) = E + a·x^(−b) |
| `kaplan_ns` | N, S | L(N, S) = (N_c/N)^α_N + (S_c/S)^α_S   (Kaplan et al. 2020) |
| `chinchilla` | N, D | L(N, D) = E + A/N^α + B/D^β   (Hoffmann et al. 2022) |

x may be parameters, steps, samples or FLOPs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scaling.errors import FitError


@dataclass(frozen=True)
class Param:
    """One named, bounded parameter of a law."""

    name: str
    "Name used in formulas, JSON and `FitResult.params` (a Python identifier)."
    lower: float
    "Lower bound (natural units; > 0 for `log` parameters)."
    upper: float
    "Upper bound (natural units)."
    grid: tuple[float, ...]
    "Initial values tried by the grid search, in the fitted space (the log of the value when `log`)."
    log: bool = False
    "A scale parameter: fitted as log(value), so it stays positive and spans decades."
    symbol: str = ""
    "LaTeX symbol (default: the name)."
    scales: tuple[str, str | float] | None = None
    """`(input, exponent)` when the parameter multiplies input^(−exponent) (`a` in a·x^(−b): `("x", "b")`;
    N_c in (N_c/N)^α: `("N", 1.0)`). An input named here is divided by its geometric mean x₀ during the fit
    (better conditioning; results are mapped back), so declare it only when every occurrence of the input
    in `fn` is absorbed that way; leave it None otherwise (the input is then used as is)."""

    @property
    def bounds(self) -> tuple[float, float]:
        """Bounds in the fitted space."""
        if self.log:
            return float(np.log(self.lower)), float(np.log(self.upper))
        return float(self.lower), float(self.upper)

    def to_value(self, theta):
        """Fitted space -> natural value (works on arrays)."""
        return np.exp(theta) if self.log else theta

    def to_theta(self, value: float) -> float:
        return float(np.log(value)) if self.log else float(value)


@dataclass(frozen=True)
class Law:
    """A scaling law: `fn(*inputs, *params)` in the order of `inputs` and `params`."""

    name: str
    "Registry key, e.g. `power`."
    inputs: tuple[str, ...]
    "Symbolic inputs, e.g. `('x',)` or `('N', 'D')`; the fitter maps table columns onto them."
    params: tuple[Param, ...]
    "Parameters in the order `fn` takes them."
    fn: Callable[..., np.ndarray]
    "The law's value; broadcasts over inputs and parameters."
    template: str
    "Plain formula with `<param>` placeholders, e.g. `y = <a>·x^-<b>`."
    latex: str
    "LaTeX formula with `<param>` placeholders, e.g. `y = <a>\\,x^{-<b>}`."
    description: str = ""
    "One line: what the law models and where it comes from."

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def __call__(self, *inputs, **params) -> np.ndarray:
        """Evaluate with natural parameter values: `law(x, a=0.369, b=0.03)`."""
        missing = [p.name for p in self.params if p.name not in params]
        if missing:
            raise FitError(f"law {self.name}: missing parameters {missing}; it takes {list(self.names)}")
        args = [np.asarray(v, dtype=float) for v in inputs]
        return self.fn(*args, *(params[p.name] for p in self.params))

    def grid(self) -> np.ndarray:
        """All combinations of the parameters' initial values, shape (k, P), in the fitted space."""
        axes = np.meshgrid(*[np.asarray(p.grid, dtype=float) for p in self.params], indexing="ij")
        return np.stack([a.ravel() for a in axes], axis=1)

    def formula(self, values: dict[str, float] | None = None, latex: bool = False) -> str:
        """The formula with numbers (`y = 0.369·x^-0.030`), or with symbols when `values` is None."""
        text = self.latex if latex else self.template
        def sub(m: re.Match) -> str:
            name = m.group(1)
            if values is None:
                p = next(p for p in self.params if p.name == name)
                return (p.symbol or p.name) if latex else p.name
            return format_number(values[name], latex=latex)
        return re.sub(r"<(\w+)>", sub, text)


def format_number(v: float, latex: bool = False) -> str:
    """0.369 -> '0.369', 0.03 -> '0.030', 406.4 -> '406.4', 140000 -> '1.4e5' (LaTeX: '1.4\\times10^{5}')."""
    v = float(v)
    if v == 0 or 1e-3 <= abs(v) < 1:
        return f"{v:.3f}"
    if 1 <= abs(v) < 1e3:
        return f"{v:#.4g}".rstrip(".")
    mant, exp = f"{v:.1e}".split("e")
    exp = str(int(exp))
    return f"{mant}\\times10^{{{exp}}}" if latex else f"{mant}e{exp}"


def evaluate(law: Law, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Law values for parameter vectors `theta` (fitted space), shape (..., P), at inputs X, shape (I, n).

    Returns shape (..., n).
    """
    theta = np.asarray(theta)
    args = [X[i] for i in range(len(law.inputs))]
    params = [p.to_value(theta[..., j, None]) for j, p in enumerate(law.params)]
    return law.fn(*args, *params)


def _lin(lo: float, hi: float, n: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.linspace(lo, hi, n))


# Grids are in the fitted space: log(value) for scale parameters. They are wide on purpose (x may be
# params ~1e5..1e10, steps ~1e2..1e6 or FLOPs ~1e12..1e24); the best few grid points start L-BFGS-B.
_LOG_SCALE = _lin(-10.0, 60.0, 29)     # a, A, B: e^-10 .. e^60
_EXPONENT = _lin(0.0, 2.0, 11)         # b, α, β
_LOG_FLOOR = _lin(-3.0, 2.0, 11)       # E: 0.05 .. 7.4

LAWS: dict[str, Law] = {}


def register(law: Law) -> Law:
    """Add a law to `LAWS` (a duplicate name replaces the old one) and return it."""
    LAWS[law.name] = law
    return law


register(Law(
    name="power",
    inputs=("x",),
    params=(Param("a", 1e-12, 1e60, _LOG_SCALE, log=True, scales=("x", "b")),
            Param("b", 0.0, 5.0, _EXPONENT)),
    fn=lambda x, a, b: a * x ** -b,
    template="y = <a>·x^-<b>",
    latex=r"y = <a>\,x^{-<b>}",
    description="pure power law L(x) = a·x^(−b)",
))

register(Law(
    name="power_offset",
    inputs=("x",),
    params=(Param("E", 1e-9, 1e3, _LOG_FLOOR, log=True),
            Param("a", 1e-12, 1e60, _LOG_SCALE, log=True, scales=("x", "b")),
            Param("b", 0.0, 5.0, _EXPONENT)),
    fn=lambda x, E, a, b: E + a * x ** -b,
    template="y = <E> + <a>·x^-<b>",
    latex=r"y = <E> + <a>\,x^{-<b>}",
    description="power law with an irreducible floor E: L(x) = E + a·x^(−b)",
))

register(Law(
    name="kaplan_ns",
    inputs=("N", "S"),
    params=(Param("N_c", 1.0, 1e60, _lin(0.0, 60.0, 13), log=True, symbol="N_c", scales=("N", 1.0)),
            Param("alpha_N", 1e-4, 5.0, _lin(0.05, 1.0, 5), symbol=r"\alpha_N"),
            Param("S_c", 1.0, 1e60, _lin(0.0, 60.0, 13), log=True, symbol="S_c", scales=("S", 1.0)),
            Param("alpha_S", 1e-4, 5.0, _lin(0.05, 1.0, 5), symbol=r"\alpha_S")),
    fn=lambda N, S, N_c, alpha_N, S_c, alpha_S: (N_c / N) ** alpha_N + (S_c / S) ** alpha_S,
    template="y = (<N_c>/N)^<alpha_N> + (<S_c>/S)^<alpha_S>",
    latex=r"y = \left(\frac{<N_c>}{N}\right)^{<alpha_N>} + \left(\frac{<S_c>}{S}\right)^{<alpha_S>}",
    description="Kaplan et al. 2020: loss over parameters N and steps S",
))

register(Law(
    name="chinchilla",
    inputs=("N", "D"),
    # Hoffmann et al. 2022 (approach 3): e in {-1,..,1.5}, log A, log B in {0,5,..,25}, α, β in {0,..,2}.
    params=(Param("E", 1e-9, 1e3, _lin(-1.0, 1.5, 6), log=True),
            Param("A", 1e-9, 1e60, _lin(0.0, 25.0, 6), log=True, scales=("N", "alpha")),
            Param("alpha", 0.0, 5.0, _lin(0.0, 2.0, 5), symbol=r"\alpha"),
            Param("B", 1e-9, 1e60, _lin(0.0, 25.0, 6), log=True, scales=("D", "beta")),
            Param("beta", 0.0, 5.0, _lin(0.0, 2.0, 5), symbol=r"\beta")),
    fn=lambda N, D, E, A, alpha, B, beta: E + A * N ** -alpha + B * D ** -beta,
    template="y = <E> + <A>·N^-<alpha> + <B>·D^-<beta>",
    latex=r"y = <E> + <A>\,N^{-<alpha>} + <B>\,D^{-<beta>}",
    description="Hoffmann et al. 2022: loss over parameters N and data D (tokens, samples or steps)",
))


def get_law(name: str) -> Law:
    """The law called `name`, or a FitError listing the known ones."""
    try:
        return LAWS[name]
    except KeyError:
        raise FitError(f"unknown law {name!r}; known laws: {', '.join(LAWS)}") from None
