"""Checks of the NIST StRD data files in tests/data/nist and of tests/nist.py."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nist

# (name, difficulty, n_params, n_obs), copied from the table in
# tests/data/nist/README.md. This is an independent
# check of the parser, so keep it hard-coded.
TABLE = [
    ("Misra1a", "lower", 2, 14),
    ("Chwirut2", "lower", 3, 54),
    ("Chwirut1", "lower", 3, 214),
    ("Lanczos3", "lower", 6, 24),
    ("Gauss1", "lower", 8, 250),
    ("Gauss2", "lower", 8, 250),
    ("DanWood", "lower", 2, 6),
    ("Misra1b", "lower", 2, 14),
    ("Kirby2", "average", 5, 151),
    ("Hahn1", "average", 7, 236),
    ("Nelson", "average", 3, 128),
    ("MGH17", "average", 5, 33),
    ("Lanczos1", "average", 6, 24),
    ("Lanczos2", "average", 6, 24),
    ("Gauss3", "average", 8, 250),
    ("Misra1c", "average", 2, 14),
    ("Misra1d", "average", 2, 14),
    ("Roszman1", "average", 4, 25),
    ("ENSO", "average", 9, 168),
    ("MGH09", "higher", 4, 11),
    ("Thurber", "higher", 7, 37),
    ("BoxBOD", "higher", 2, 6),
    ("Rat42", "higher", 3, 9),
    ("MGH10", "higher", 3, 16),
    ("Eckerle4", "higher", 3, 35),
    ("Rat43", "higher", 4, 15),
    ("Bennett5", "higher", 3, 154),
]
TABLE_NAMES = [row[0] for row in TABLE]


def x64():
    """Context manager that enables float64 in JAX only inside the block.

    jax 0.10.2 has no ``jax.experimental.enable_x64``; the config state
    ``jax.enable_x64`` is itself a context manager factory. Older jax had the
    experimental one.
    """
    if callable(getattr(jax, "enable_x64", None)):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # pragma: no cover  (older jax)

    return enable_x64()


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def test_tests_dir_is_not_a_package():
    # `import nist` relies on pytest putting tests/ on sys.path (rootdir
    # insertion), which only happens when tests/ has no __init__.py.
    assert not (Path(__file__).parent / "__init__.py").exists()


def test_data_dir_has_exactly_the_27_files():
    files = sorted(p.stem for p in nist.DATA_DIR.glob("*.dat"))
    assert files == sorted(TABLE_NAMES)


def _readme_sha256() -> dict[str, str]:
    text = (nist.DATA_DIR / "README.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^\| (\w+)\.dat \| `([0-9a-f]{64})` \|$", text, re.M))


def test_files_match_readme_sha256_and_keep_crlf():
    sums = _readme_sha256()
    assert sorted(sums) == sorted(TABLE_NAMES)
    for name, digest in sums.items():
        raw = (nist.DATA_DIR / f"{name}.dat").read_bytes()
        # Every line ends in CRLF, exactly as NIST distributes the files.
        assert raw.endswith(b"\r\n"), name
        assert raw.count(b"\n") == raw.count(b"\r\n"), name
        assert hashlib.sha256(raw).hexdigest() == digest, name


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------


def test_names_order_and_difficulty_counts():
    assert nist.NAMES == TABLE_NAMES
    assert [p.name for p in nist.load_all()] == TABLE_NAMES
    counts = {d: sum(1 for row in TABLE if row[1] == d) for d in ("lower", "average", "higher")}
    assert counts == {"lower": 8, "average": 11, "higher": 8}


@pytest.mark.parametrize("name,difficulty,n_params,n_obs", TABLE, ids=TABLE_NAMES)
def test_parse_matches_table(name, difficulty, n_params, n_obs):
    p = nist.load(name)
    assert p.name == name
    assert p.difficulty == difficulty
    assert p.n_params == n_params
    assert p.n_obs == n_obs
    for arr in (p.start1, p.start2, p.certified, p.certified_sd):
        assert arr.shape == (n_params,)
        assert arr.dtype == np.float64
        assert np.all(np.isfinite(arr))
        assert not arr.flags.writeable
    assert np.all(p.certified_sd > 0)
    assert p.y.shape == (n_obs,) and p.y.dtype == np.float64
    assert p.x.shape == ((n_obs, 2) if name == "Nelson" else (n_obs,))
    assert p.x.dtype == np.float64
    assert np.all(np.isfinite(p.x)) and np.all(np.isfinite(p.y))
    assert isinstance(p.certified_rss, float) and p.certified_rss > 0
    assert isinstance(p.certified_residual_sd, float) and p.certified_residual_sd > 0
    assert isinstance(p.dof, int)


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_dof_and_residual_sd(name):
    p = nist.load(name)
    n_minus_p = p.n_obs - p.n_params
    if name == "Rat43":
        # Quirk of the original NIST file: it prints 9, but n - p = 11.
        assert p.dof == 9 and n_minus_p == 11
    else:
        assert p.dof == n_minus_p
    # The certified residual SD is sqrt(RSS / (n - p)) everywhere, Rat43 too.
    sd = math.sqrt(p.certified_rss / n_minus_p)
    assert sd == pytest.approx(p.certified_residual_sd, rel=1e-9)


def test_spot_values():
    # A few values read by eye from the files.
    m = nist.load("Misra1a")
    np.testing.assert_array_equal(m.start1, [500.0, 0.0001])
    np.testing.assert_array_equal(m.start2, [250.0, 0.0005])
    np.testing.assert_array_equal(m.certified, [2.3894212918e02, 5.5015643181e-04])
    np.testing.assert_array_equal(m.certified_sd, [2.7070075241e00, 7.2668688436e-06])
    assert m.certified_rss == 1.2455138894e-01
    assert m.certified_residual_sd == 1.0187876330e-01
    assert (m.y[0], m.x[0], m.y[-1], m.x[-1]) == (10.07, 77.6, 81.78, 760.0)

    # Roszman1 keeps NIST's original b1, not ceres-solver's later edit.
    assert nist.load("Roszman1").certified[0] == 2.0196866396e-01

    # Nelson: y is log of the file's y column; x is (x1, x2).
    n = nist.load("Nelson")
    assert n.y[0] == np.log(15.0)
    np.testing.assert_array_equal(n.x[0], [1.0, 180.0])

    # Lanczos1's tiny certified RSS.
    assert nist.load("Lanczos1").certified_rss == 1.4307867721e-25


def test_load_unknown_and_cache():
    with pytest.raises(KeyError):
        nist.load("NoSuchProblem")
    assert nist.load("Misra1a") is nist.load("Misra1a")


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_rss_at_certified_values_float64(name):
    p = nist.load(name)
    with x64():
        b = jnp.asarray(p.certified, dtype=jnp.float64)
        r = p.residual()(b, p.x, p.y)
        assert r.dtype == jnp.float64
        assert r.shape == (p.n_obs,)
        rss = float(jnp.sum(r**2))
    # Same thing in plain numpy float64 (sum of squares of the residual).
    rss_np = float(np.sum(np.asarray(r, dtype=np.float64) ** 2))
    assert rss == pytest.approx(rss_np, rel=1e-12)
    if name == "Lanczos1":
        # Certified RSS is 1.43e-25; from the 11-digit certified parameters
        # the RSS is ~4e-21, rounding noise in the parameters (see README).
        assert rss < 1e-18
    else:
        assert rss == pytest.approx(p.certified_rss, rel=1e-8)


def test_x64_context_does_not_leak():
    with x64():
        assert jnp.asarray(1.0).dtype == jnp.float64
    assert jnp.asarray(1.0).dtype == jnp.float32


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_models_float32_jit_and_grad(name):
    p = nist.load(name)
    fun = p.residual()
    b32 = jnp.asarray(p.certified, dtype=jnp.float32)
    r = jax.jit(fun)(b32, p.x, p.y)
    assert r.dtype == jnp.float32 and r.shape == (p.n_obs,)
    assert bool(jnp.all(jnp.isfinite(r)))
    # float32 RSS at the certified values is in the right ballpark (Lanczos1's
    # 1e-25 RSS is far below float32 resolution, so only check it is small).
    rss32 = float(jnp.sum(r**2))
    if name.startswith("Lanczos"):
        assert rss32 < 1e-6
    else:
        assert rss32 == pytest.approx(p.certified_rss, rel=1e-2)

    jac = jax.jit(jax.jacfwd(fun))
    grad = jax.jit(jax.grad(lambda b, x, y: 0.5 * jnp.sum(fun(b, x, y) ** 2)))
    for start in (p.start1, p.start2, p.certified):
        b = jnp.asarray(start, jnp.float32)
        J = jac(b, p.x, p.y)
        assert J.shape == (p.n_obs, p.n_params) and J.dtype == jnp.float32
        g = grad(b, p.x, p.y)
        assert g.shape == (p.n_params,) and g.dtype == jnp.float32


# --------------------------------------------------------------------------
# lre
# --------------------------------------------------------------------------


def test_lre_known_values():
    assert nist.lre([1.0, 2.0], [1.0, 2.0]) == 11.0
    assert nist.lre([1.0, 2.0], [1.0, 2.0], cap=15.0) == 15.0
    assert nist.lre(1.001, 1.0) == pytest.approx(3.0)
    assert nist.lre(-1.001, -1.0) == pytest.approx(3.0)
    assert nist.lre(100.00001, 100.0) == pytest.approx(7.0)
    # Worst parameter wins.
    assert nist.lre([1.0 + 1e-6, 2.0 * (1 + 1e-3), 3.0], [1.0, 2.0, 3.0]) == pytest.approx(3.0)
    # Capped.
    assert nist.lre(1.0 + 1e-14, 1.0) == 11.0
    assert nist.lre(1.0 + 1e-6, 1.0, cap=4.0) == 4.0
    # No correct digits -> 0, never negative.
    assert nist.lre(-1.0, 1.0) == 0.0
    assert nist.lre(1e5, 1.0) == 0.0
    # Non-finite estimate -> 0.
    assert nist.lre([np.nan, 1.0], [1.0, 1.0]) == 0.0
    assert nist.lre([1.0, np.inf], [1.0, 1.0]) == 0.0
    # Works on jax arrays and returns a Python float.
    out = nist.lre(jnp.asarray([1.001], jnp.float32), np.asarray([1.0]))
    assert type(out) is float
    assert out == pytest.approx(3.0, abs=1e-3)


def test_lre_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        nist.lre([1.0, 2.0], [1.0])


def test_lre_of_certified_against_itself():
    for p in nist.load_all():
        assert nist.lre(p.certified, p.certified) == 11.0
        assert nist.lre(p.start1, p.certified) < 11.0
