"""MultiStartResult.save / load: one file, every field back bit for bit, no model needed."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitfleet as ff


def residual(p, x, y):  # two minima in "a"; dict parameters, to exercise the pytree
    return jnp.concatenate([(p["a"][0] ** 2 - 1.0) * jnp.ones(2) + 1e-2 * (p["a"][0] - 1.0), p["b"] * x - y])


X = jnp.linspace(0.0, 1.0, 5)
Y = 2.0 * X + 0.1 * jnp.sin(7 * X)


@pytest.fixture(scope="module")
def ms():
    with jax.enable_x64(True):
        return ff.multistart(residual, {"a": np.array([-3.0]), "b": 0.0}, {"a": np.array([1.0]), "b": 3.0}, 12, (X, Y),
                             history=3, bounds=({"a": np.array([-5.0]), "b": -np.inf}, {"a": np.array([5.0]), "b": np.inf}))  # fmt: skip


def assert_same(a, b):
    """Same pytree structure (static fields included: names, bounds, loss, ...) and
    every leaf equal, dtype and all."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def test_round_trip_is_exact(ms, tmp_path):
    path = tmp_path / "ms.npz"
    ms.save(path, info={"problem": "two minima", "offset": 1.5})
    back = ff.MultiStartResult.load(path)
    assert_same(back, ms)
    assert back.results.history is not None and back.results.bounds == ms.results.bounds
    assert back.summary() == ms.summary()
    assert ff.MultiStartResult.load_info(path) == {"problem": "two minima", "offset": 1.5}
    assert [o.n_starts for o in back.optima] == [o.n_starts for o in ms.optima] and len(ms.optima) == 2


def test_loading_needs_no_model_and_no_x64(ms, tmp_path):
    """A fresh process without the residual function (and in float32 mode) reads the
    file; float64 arrays stay float64."""
    path = tmp_path / "ms.npz"
    ms.save(path)
    code = (
        "import sys, numpy as np, fitfleet as ff\n"
        "ms = ff.MultiStartResult.load(sys.argv[1])\n"
        "assert ms.results.cost.dtype == np.float64, ms.results.cost.dtype\n"
        "print(repr(float(ms.best.cost)), ms.n_success, ms.results.names)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == [repr(float(ms.best.cost)), str(ms.n_success)]


def test_write_is_atomic_and_replaces(ms, tmp_path):
    path = tmp_path / "ms.npz"
    path.write_text("an older file")
    ms.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ms.npz"]  # no temporary file left
    assert_same(ff.MultiStartResult.load(path), ms)


def test_bad_input_is_a_clear_error(ms, tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        ff.MultiStartResult.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a file that fitfleet wrote"):
        ff.MultiStartResult.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", __header__=np.asarray('{"format": "something else"}'))
    with pytest.raises(ValueError, match="something else"):
        ff.MultiStartResult.load(tmp_path / "other.npz")
    with pytest.raises(TypeError, match="JSON"):
        ms.save(tmp_path / "x.npz", info={"f": residual})
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(FileNotFoundError, match="the folder .* does not exist"):
        ms.save(tmp_path / "no such folder" / "x.npz")
