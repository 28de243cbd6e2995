"""NIST StRD nonlinear regression reference problems, for fitfleet's tests.

The 27 original NIST ``.dat`` files are in ``tests/data/nist/``. See the
README there for where they come from and what is odd about them. This module
parses them and supplies a hand-written ``jax.numpy`` model for each one::

    import nist

    p = nist.load("Misra1a")
    r = p.residual()                 # r(b, x, y) = y - p.model(b, x)
    r(jnp.asarray(p.start1), p.x, p.y)
    nist.lre(b_hat, p.certified)     # number of correct significant digits

The numbers (starting values, certified values, summary statistics and data)
come from each file, at the line ranges its ``File Format`` header gives. None
of them are copied into this module. Only the model formulas are written by
hand.

This is a plain module, not a package: pytest puts ``tests/`` on ``sys.path``
because ``tests/`` has no ``__init__.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from pathlib import Path
from typing import Callable

import jax.numpy as jnp
import numpy as np

__all__ = ["DATA_DIR", "NAMES", "NISTProblem", "load", "load_all", "lre"]

DATA_DIR = Path(__file__).resolve().parent / "data" / "nist"


# --------------------------------------------------------------------------
# Models. Each model takes b (a 1-D array; b[0] is NIST's b1) and x (a numpy
# or jax array of predictors) and returns the predictions. x is cast to b's
# dtype, so the models are jit-able and differentiable in float32 and in
# float64.
# --------------------------------------------------------------------------


def _prep(b, x):
    b = jnp.asarray(b)
    if not jnp.issubdtype(b.dtype, jnp.inexact):
        b = b.astype(jnp.result_type(float))
    return b, jnp.asarray(x, b.dtype)


def _misra1a(b, x):  # Misra1a, BoxBOD: y = b1*(1-exp[-b2*x])
    b, x = _prep(b, x)
    return b[0] * (1 - jnp.exp(-b[1] * x))


def _chwirut(b, x):  # Chwirut1, Chwirut2: y = exp[-b1*x]/(b2+b3*x)
    b, x = _prep(b, x)
    return jnp.exp(-b[0] * x) / (b[1] + b[2] * x)


def _lanczos(b, x):  # Lanczos1/2/3: y = b1*exp(-b2*x) + b3*exp(-b4*x) + b5*exp(-b6*x)
    b, x = _prep(b, x)
    return b[0] * jnp.exp(-b[1] * x) + b[2] * jnp.exp(-b[3] * x) + b[4] * jnp.exp(-b[5] * x)


def _gauss(b, x):
    # Gauss1/2/3: y = b1*exp(-b2*x) + b3*exp(-(x-b4)**2 / b5**2)
    #                 + b6*exp(-(x-b7)**2 / b8**2)
    b, x = _prep(b, x)
    return (
        b[0] * jnp.exp(-b[1] * x)
        + b[2] * jnp.exp(-((x - b[3]) ** 2) / b[4] ** 2)
        + b[5] * jnp.exp(-((x - b[6]) ** 2) / b[7] ** 2)
    )


def _danwood(b, x):  # y = b1*x**b2
    b, x = _prep(b, x)
    return b[0] * x ** b[1]


def _misra1b(b, x):  # y = b1 * (1-(1+b2*x/2)**(-2))
    b, x = _prep(b, x)
    return b[0] * (1 - (1 + b[1] * x / 2) ** (-2))


def _kirby2(b, x):  # y = (b1 + b2*x + b3*x**2) / (1 + b4*x + b5*x**2)
    b, x = _prep(b, x)
    return (b[0] + b[1] * x + b[2] * x**2) / (1 + b[3] * x + b[4] * x**2)


def _cubic_cubic(b, x):
    # Hahn1, Thurber: y = (b1 + b2*x + b3*x**2 + b4*x**3) / (1 + b5*x + b6*x**2 + b7*x**3)
    b, x = _prep(b, x)
    return (b[0] + b[1] * x + b[2] * x**2 + b[3] * x**3) / (
        1 + b[4] * x + b[5] * x**2 + b[6] * x**3
    )


def _nelson(b, x):
    # log[y] = b1 - b2*x1 * exp[-b3*x2]; x has shape (n, 2) = (x1, x2).
    # Returns the prediction of log(y), not of y.
    b, x = _prep(b, x)
    return b[0] - b[1] * x[:, 0] * jnp.exp(-b[2] * x[:, 1])


def _mgh17(b, x):  # y = b1 + b2*exp[-x*b4] + b3*exp[-x*b5]
    b, x = _prep(b, x)
    return b[0] + b[1] * jnp.exp(-x * b[3]) + b[2] * jnp.exp(-x * b[4])


def _misra1c(b, x):  # y = b1 * (1-(1+2*b2*x)**(-.5))
    b, x = _prep(b, x)
    return b[0] * (1 - (1 + 2 * b[1] * x) ** (-0.5))


def _misra1d(b, x):  # y = b1*b2*x*((1+b2*x)**(-1))
    b, x = _prep(b, x)
    return b[0] * b[1] * x * ((1 + b[1] * x) ** (-1))


def _roszman1(b, x):
    # pi = 3.141592653589793238462643383279E0
    # y = b1 - b2*x - arctan[b3/(x-b4)]/pi   (principal value, radians)
    b, x = _prep(b, x)
    return b[0] - b[1] * x - jnp.arctan(b[2] / (x - b[3])) / jnp.pi


def _enso(b, x):
    # y = b1 + b2*cos(2*pi*x/12) + b3*sin(2*pi*x/12)
    #        + b5*cos(2*pi*x/b4) + b6*sin(2*pi*x/b4)
    #        + b8*cos(2*pi*x/b7) + b9*sin(2*pi*x/b7)
    b, x = _prep(b, x)
    w = 2 * jnp.pi * x
    return (
        b[0]
        + b[1] * jnp.cos(w / 12)
        + b[2] * jnp.sin(w / 12)
        + b[4] * jnp.cos(w / b[3])
        + b[5] * jnp.sin(w / b[3])
        + b[7] * jnp.cos(w / b[6])
        + b[8] * jnp.sin(w / b[6])
    )


def _mgh09(b, x):  # y = b1*(x**2+x*b2) / (x**2+x*b3+b4)
    b, x = _prep(b, x)
    return b[0] * (x**2 + x * b[1]) / (x**2 + x * b[2] + b[3])


def _rat42(b, x):  # y = b1 / (1+exp[b2-b3*x])
    b, x = _prep(b, x)
    return b[0] / (1 + jnp.exp(b[1] - b[2] * x))


def _mgh10(b, x):  # y = b1 * exp[b2/(x+b3)]
    b, x = _prep(b, x)
    return b[0] * jnp.exp(b[1] / (x + b[2]))


def _eckerle4(b, x):  # y = (b1/b2) * exp[-0.5*((x-b3)/b2)**2]
    b, x = _prep(b, x)
    return (b[0] / b[1]) * jnp.exp(-0.5 * ((x - b[2]) / b[1]) ** 2)


def _rat43(b, x):  # y = b1 / ((1+exp[b2-b3*x])**(1/b4))
    b, x = _prep(b, x)
    return b[0] / ((1 + jnp.exp(b[1] - b[2] * x)) ** (1 / b[3]))


def _bennett5(b, x):  # y = b1 * (b2+x)**(-1/b3)
    b, x = _prep(b, x)
    return b[0] * (b[1] + x) ** (-1 / b[2])


# Name -> (difficulty, model), in the order of INDEX.md / the README table:
# NIST difficulty (lower, average, higher), then NIST's listing order.
_REGISTRY: dict[str, tuple[str, Callable]] = {
    "Misra1a": ("lower", _misra1a),
    "Chwirut2": ("lower", _chwirut),
    "Chwirut1": ("lower", _chwirut),
    "Lanczos3": ("lower", _lanczos),
    "Gauss1": ("lower", _gauss),
    "Gauss2": ("lower", _gauss),
    "DanWood": ("lower", _danwood),
    "Misra1b": ("lower", _misra1b),
    "Kirby2": ("average", _kirby2),
    "Hahn1": ("average", _cubic_cubic),
    "Nelson": ("average", _nelson),
    "MGH17": ("average", _mgh17),
    "Lanczos1": ("average", _lanczos),
    "Lanczos2": ("average", _lanczos),
    "Gauss3": ("average", _gauss),
    "Misra1c": ("average", _misra1c),
    "Misra1d": ("average", _misra1d),
    "Roszman1": ("average", _roszman1),
    "ENSO": ("average", _enso),
    "MGH09": ("higher", _mgh09),
    "Thurber": ("higher", _cubic_cubic),
    "BoxBOD": ("higher", _misra1a),
    "Rat42": ("higher", _rat42),
    "MGH10": ("higher", _mgh10),
    "Eckerle4": ("higher", _eckerle4),
    "Rat43": ("higher", _rat43),
    "Bennett5": ("higher", _bennett5),
}

#: The 27 dataset names, sorted by NIST difficulty (lower, average, higher),
#: then in NIST's listing order.
NAMES: list[str] = list(_REGISTRY)


# --------------------------------------------------------------------------
# Problem record
# --------------------------------------------------------------------------


# eq=False: the fields hold numpy arrays, so the generated __eq__/__hash__
# would raise. Problems compare and hash by identity instead.
@dataclasses.dataclass(frozen=True, eq=False)
class NISTProblem:
    """One NIST StRD nonlinear regression problem.

    Attributes:
      name: dataset name, as in the file, e.g. ``"Misra1a"``.
      difficulty: NIST's level of difficulty: ``"lower"``, ``"average"`` or
        ``"higher"``.
      model: ``model(b, x) -> predictions``, written in ``jax.numpy``. ``b`` is
        a 1-D array of the p parameters (``b[0]`` is NIST's b1). ``x`` is
        ``self.x`` or a slice of it, and is cast to ``b.dtype``, so the model
        works (and jit/grad work) for float32 and float64 ``b``.
      x: predictors, float64, shape ``(n,)``. For Nelson, shape ``(n, 2)``
        with columns ``(x1, x2)``.
      y: responses, float64, shape ``(n,)``. **For Nelson this is log(y) of
        the file's y column**, because NIST's Nelson model, and its certified
        values, RSS and residual SD, are for log[y].
      start1, start2: NIST's two starting points ("Start 1" is farther from
        the solution than "Start 2"), float64, shape ``(p,)``.
      certified: certified parameter values, float64, shape ``(p,)``.
      certified_sd: certified standard deviations of the parameters.
      certified_rss: certified residual sum of squares.
      certified_residual_sd: certified residual standard deviation.
      dof: degrees of freedom, as printed in the file. This is n - p for every
        file except Rat43, which prints 9 where n - p = 11 (a quirk of the
        original NIST file; its residual SD is sqrt(RSS/11)).

    The arrays are read-only.
    """

    name: str
    difficulty: str
    model: Callable
    x: np.ndarray
    y: np.ndarray
    start1: np.ndarray
    start2: np.ndarray
    certified: np.ndarray
    certified_sd: np.ndarray
    certified_rss: float
    certified_residual_sd: float
    dof: int

    @property
    def n_params(self) -> int:
        """Number of parameters, p."""
        return int(self.certified.shape[0])

    @property
    def n_obs(self) -> int:
        """Number of observations, n."""
        return int(self.y.shape[0])

    def residual(self) -> Callable:
        """Return ``fun(b, x, y) = y - self.model(b, x)``.

        ``y`` is cast to the dtype of the model output, so the residual is in
        ``b``'s precision. Use it as ``self.residual()(b, self.x, self.y)``.
        The sum of squares of the residual at ``self.certified`` is the
        certified RSS.

        Every call returns the same function object for a given model, so fits of the
        same problem (in any test module) share one compilation.
        """
        return _residual_of(self.model)

    def __repr__(self) -> str:
        return (
            f"NISTProblem(name={self.name!r}, difficulty={self.difficulty!r}, "
            f"n_params={self.n_params}, n_obs={self.n_obs})"
        )


@functools.cache
def _residual_of(model: Callable) -> Callable:
    def fun(b, x, y):
        pred = model(b, x)
        return jnp.asarray(y, pred.dtype) - pred

    return fun


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------

_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = r"\(\s*lines\s+(\d+)\s+to\s+(\d+)\s*\)"
_PARAM_LINE = re.compile(
    rf"^\s*b(\d+)\s*=\s*({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s*$"
)
_DIFFICULTY = re.compile(r"^\s*(Lower|Average|Higher)\s+Level\s+of\s+Difficulty", re.I)


class NISTFormatError(ValueError):
    """A NIST ``.dat`` file does not have the expected layout."""


def _line_range(text: str, label: str, path: Path) -> tuple[int, int]:
    m = re.search(rf"^[ \t]*{label}[ \t]+{_RANGE}", text, re.M | re.I)
    if m is None:
        raise NISTFormatError(f"{path.name}: no '{label} (lines a to b)' in the File Format block")
    first, last = int(m.group(1)), int(m.group(2))
    if not 1 <= first <= last:
        raise NISTFormatError(f"{path.name}: bad {label} line range {first}..{last}")
    return first, last


def _summary_value(lines: list[str], label: str, path: Path) -> str:
    found = [ln.split(":", 1)[1].strip() for ln in lines if ln.strip().startswith(label + ":")]
    if len(found) != 1:
        raise NISTFormatError(f"{path.name}: expected one '{label}:' line in the certified block")
    return found[0]


def _parse(path: Path) -> dict:
    text = path.read_bytes().decode("ascii")
    lines = text.splitlines()  # handles the CRLF line endings

    m = re.search(r"^Dataset Name:\s+(\S+)\s+\((\S+)\)", text, re.M)
    if m is None or m.group(2) != path.name or m.group(1) != path.stem:
        raise NISTFormatError(f"{path.name}: dataset name line does not match the file name")
    name = m.group(1)

    s_first, s_last = _line_range(text, "Starting Values", path)
    c_first, c_last = _line_range(text, "Certified Values", path)
    d_first, d_last = _line_range(text, "Data", path)
    if not (s_first == c_first and s_last < c_last < d_first and d_last <= len(lines)):
        raise NISTFormatError(f"{path.name}: inconsistent File Format line ranges")

    # Parameter lines: "bK = start1 start2 certified sd", one per line of the
    # Starting Values range (1-based, inclusive).
    params = []
    for k, ln in enumerate(lines[s_first - 1 : s_last], start=1):
        pm = _PARAM_LINE.match(ln)
        if pm is None or int(pm.group(1)) != k:
            raise NISTFormatError(f"{path.name}: line {s_first + k - 1} is not 'b{k} = ...': {ln!r}")
        params.append([float(v) for v in pm.group(2, 3, 4, 5)])
    params = np.array(params, dtype=np.float64)
    p = params.shape[0]

    # The Certified Values range is the parameter lines plus the summary lines.
    cert_block = lines[c_first - 1 : c_last]
    if sum(1 for ln in cert_block if _PARAM_LINE.match(ln)) != p:
        raise NISTFormatError(f"{path.name}: certified block has extra parameter lines")
    rss = float(_summary_value(cert_block, "Residual Sum of Squares", path))
    res_sd = float(_summary_value(cert_block, "Residual Standard Deviation", path))
    dof = int(_summary_value(cert_block, "Degrees of Freedom", path))
    n_obs = int(_summary_value(cert_block, "Number of Observations", path))

    # Model block: "N Parameters (b1 ...)", and the difficulty.
    pm = re.search(r"^\s*(\d+)\s+Parameters\b", text, re.M)
    if pm is None or int(pm.group(1)) != p:
        raise NISTFormatError(f"{path.name}: header parameter count does not match {p} b-lines")
    difficulty = None
    for ln in lines[: d_first - 1]:
        dm = _DIFFICULTY.match(ln)
        if dm:
            difficulty = dm.group(1).lower()
    if difficulty is None:
        raise NISTFormatError(f"{path.name}: no 'Level of Difficulty' line")

    # Data: one observation per line of the Data range; nothing after it.
    data = []
    for i, ln in enumerate(lines[d_first - 1 : d_last], start=d_first):
        try:
            data.append([float(v) for v in ln.split()])
        except ValueError:
            raise NISTFormatError(f"{path.name}: line {i} is not numeric data: {ln!r}") from None
    data = np.array(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] != n_obs or d_last - d_first + 1 != n_obs:
        raise NISTFormatError(f"{path.name}: data block does not have {n_obs} rows")
    if any(ln.strip() for ln in lines[d_last:]):
        raise NISTFormatError(f"{path.name}: text after the data block")

    return dict(
        name=name,
        difficulty=difficulty,
        params=params,
        rss=rss,
        res_sd=res_sd,
        dof=dof,
        data=data,
    )


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=None)
def load(name: str) -> NISTProblem:
    """Parse ``tests/data/nist/<name>.dat`` and return its ``NISTProblem``.

    Results are cached; the returned arrays are read-only.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown NIST dataset {name!r}; expected one of {NAMES}")
    difficulty, model = _REGISTRY[name]
    path = DATA_DIR / f"{name}.dat"
    d = _parse(path)
    if d["difficulty"] != difficulty:
        raise NISTFormatError(
            f"{path.name}: file says {d['difficulty']!r} difficulty, expected {difficulty!r}"
        )

    data = d["data"]
    if name == "Nelson":
        if data.shape[1] != 3:
            raise NISTFormatError(f"{path.name}: expected 3 columns (y x1 x2)")
        x = data[:, 1:3]
        y = np.log(data[:, 0])  # NIST's Nelson model is for log[y]
    else:
        if data.shape[1] != 2:
            raise NISTFormatError(f"{path.name}: expected 2 columns (y x)")
        x = data[:, 1]
        y = data[:, 0]

    params = d["params"]
    return NISTProblem(
        name=d["name"],
        difficulty=difficulty,
        model=model,
        x=_readonly(x),
        y=_readonly(y),
        start1=_readonly(params[:, 0]),
        start2=_readonly(params[:, 1]),
        certified=_readonly(params[:, 2]),
        certified_sd=_readonly(params[:, 3]),
        certified_rss=d["rss"],
        certified_residual_sd=d["res_sd"],
        dof=d["dof"],
    )


def load_all() -> list[NISTProblem]:
    """All 27 problems, in ``NAMES`` order (difficulty lower, average, higher)."""
    return [load(name) for name in NAMES]


# --------------------------------------------------------------------------
# Accuracy measure
# --------------------------------------------------------------------------


def lre(estimate, certified, cap: float = 11.0) -> float:
    """Log relative error: the number of correct significant digits.

    For each parameter, ``LRE = -log10(|estimate - certified| / |certified|)``
    (``-log10(|estimate|)`` if ``certified`` is 0). Returns the worst
    (smallest) LRE over the parameters, as a Python float, limited to the
    interval ``[0, cap]``:

    - an exact match gives ``cap`` (the default 11 is the number of digits
      NIST certifies);
    - a relative error of 1 or more (no correct digits) gives 0;
    - a non-finite (nan or inf) estimate gives 0.
    """
    est = np.asarray(estimate, dtype=np.float64).ravel()
    cert = np.asarray(certified, dtype=np.float64).ravel()
    if est.shape != cert.shape:
        raise ValueError(f"estimate has {est.size} values, certified has {cert.size}")
    if est.size == 0:
        raise ValueError("lre of empty arrays")
    if not np.all(np.isfinite(cert)):
        raise ValueError("certified values must be finite")
    if not np.all(np.isfinite(est)):
        return 0.0
    cap = float(cap)
    worst = cap
    for e, c in zip(est.tolist(), cert.tolist()):
        err = abs(e - c) / abs(c) if c != 0.0 else abs(e)
        if err == 0.0:
            continue
        worst = min(worst, -math.log10(err))
    return float(min(max(worst, 0.0), cap))
