"""fit_stream: results on disk equal fit_batch's in memory, chunk by chunk, bit for bit;
a run killed (SIGKILL) at any point and run again gives the store of an uninterrupted
run; two processes under jax.distributed give the store of one.

References: ``fit_batch`` on the same chunks in memory (itself checked against single
fits in test_batch.py), and an uninterrupted ``fit_stream`` run.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest

import fitfleet as ff
from fitfleet import _stream

zarr = pytest.importorskip("zarr")

T = np.linspace(0.0, 6.0, 24)
N, CHUNK = 616, 64  # 10 chunks, the last of 40 fits (the same compiled programs: a fast test)
FIELDS = ("params", "cost", "status", "n_steps")


def decay(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def decay_data(n, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.uniform(1, 3, n), rng.uniform(0.3, 2, n), rng.uniform(-0.5, 0.5, n)], 1)
    y = truth[:, :1] * np.exp(-truth[:, 1:2] * T) + truth[:, 2:] + 0.01 * rng.normal(size=(n, T.size))
    x0 = truth * rng.uniform(0.8, 1.2, truth.shape)
    x0[::37] = [50.0, 30.0, -20.0]  # some fits far away: many steps, or a failure
    return x0, y


def on_disk(tmp_path, dtype="float32", n=N):
    """x0 as a numpy memmap, y as a zarr array: the two array-likes of the protocol."""
    x0, y = decay_data(n)
    np.save(tmp_path / "x0.npy", x0.astype(dtype))
    y_store = zarr.open_array(tmp_path / "y.zarr", mode="w", shape=y.shape, chunks=(100, T.size), dtype=dtype)
    y_store[:] = y.astype(dtype)
    return np.load(tmp_path / "x0.npy", mmap_mode="r"), zarr.open_array(tmp_path / "y.zarr", mode="r")


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """Data on disk (float32) and the store of an uninterrupted run, shared by the tests
    that kill, resume or split it; children share a compilation cache."""
    path = tmp_path_factory.mktemp("stream")
    x0, y = on_disk(path)
    reference = ff.fit_stream(decay, x0, (T.astype("float32"), y), path / "reference.zarr", shared_args=(0,), chunk_size=CHUNK, progress=False)
    return path, x0, y, reference


def assert_same_store(a, b, fields=FIELDS):
    for name in (*fields, "done"):
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
        assert a[name].dtype == b[name].dtype


def test_store_equals_fit_batch_chunk_by_chunk(tmp_path, dtype):
    x0, y = on_disk(tmp_path, dtype)
    t = T.astype(dtype)
    fields = _stream.FIELDS
    out = ff.fit_stream(decay, x0, (t, y), tmp_path / "out.zarr", shared_args=(0,), chunk_size=CHUNK, fields=fields, progress=False)
    assert out.attrs["fitfleet_stream"]["chunk_size"] == CHUNK and out["done"][:].tolist() == [1] * 10
    for lo in range(0, N, CHUNK):
        ref = ff.fit_batch(decay, np.asarray(x0[lo : lo + CHUNK]), (t, y[lo : lo + CHUNK]), shared_args=(0,))
        for name in fields:
            np.testing.assert_array_equal(out[name][lo : lo + CHUNK], np.asarray(getattr(ref, name)), err_msg=name)
    assert out["params"].dtype == np.dtype(dtype) and out["jac"].shape == (N, T.size, 3)
    assert out["params"].attrs["names"] == ["p[0]", "p[1]", "p[2]"]
    assert np.mean(out["status"][:] == ff.Status.FTOL) + np.mean(np.isin(out["status"][:], [1, 3])) > 0.9  # fits, not stubs


def test_pytree_params_and_streamed_sigma(tmp_path):
    """Parameters as a dict are stored flat with their names (in the user's order in
    ``order``); a per-fit sigma (B, m) on disk is streamed like args."""
    x0, y = decay_data(50)
    params = {"amp": x0[:, 0], "rate": x0[:, 1], "offset": x0[:, 2]}
    sigma = np.random.default_rng(2).uniform(0.5, 2.0, y.shape)
    sigma_on_disk = zarr.open_array(tmp_path / "sigma.zarr", mode="w", shape=sigma.shape, chunks=(10, T.size), dtype=sigma.dtype)
    sigma_on_disk[:] = sigma

    def model(p, t, y):
        return p["amp"] * jnp.exp(-p["rate"] * t) + p["offset"] - y

    fields = ("params", "cost", "residual")
    out = ff.fit_stream(model, params, (T, y), tmp_path / "out.zarr", shared_args=(0,), chunk_size=16, sigma=sigma_on_disk, fields=fields, progress=False)
    ref = ff.fit_batch(model, params, (T, y), shared_args=(0,), chunk_size=16, sigma=sigma)
    names = out["params"].attrs["names"]
    assert sorted(names) == ["amp", "offset", "rate"]
    for i, name in enumerate(names):
        np.testing.assert_allclose(out["params"][:, i], ref.params[name], rtol=1e-6)
    np.testing.assert_allclose(out["residual"][:], ref.residual, rtol=1e-5, atol=1e-6)  # whitened by each fit's sigma
    assert [names[i] for i in out["params"].attrs["order"]] == ["amp", "rate", "offset"]  # the user's order


class Recorder:
    """An array-like on 'disk' that records every read and refuses to be read whole."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, []

    def __getitem__(self, index):
        rows = range(*index.indices(self.shape[0])) if isinstance(index, slice) else [index]
        self.reads.append(len(rows))
        return self.array[index]

    def __array__(self, *args, **kwargs):
        raise AssertionError("read whole")


def test_memory_bounded_by_chunk_not_data(tmp_path, monkeypatch):
    """The default chunk follows the memory budget; inputs are read a chunk at a time."""
    x0, y = decay_data(N)
    x0, y = Recorder(x0.astype("float32")), Recorder(y.astype("float32"))
    budget = 64 * 1360  # 64 fits' worth (below)
    monkeypatch.setattr(_stream.store, "MEMORY_BUDGET", budget)
    out = ff.fit_stream(decay, x0, (T.astype("float32"), y), tmp_path / "out.zarr", shared_args=(0,), progress=False)
    chunk = out.attrs["fitfleet_stream"]["chunk_size"]
    per_fit = 4 * (3 + 24) * 4 + 2 * (3 + 1 + 24 + 72 + 3 + 4) * 4 + 3 * (3 + 1 + 2) * 4  # the docstring's count
    assert chunk * per_fit <= budget  # bounded, and no more chunks than the budget needs:
    assert -(-N // chunk) == -(-N // (budget // per_fit))
    assert max(y.reads) <= chunk and sum(r for r in y.reads if r > 2) == N  # each row once (bar the fingerprint's)
    ref = ff.fit_batch(decay, x0.array, (T.astype("float32"), y.array), shared_args=(0,), chunk_size=chunk)
    np.testing.assert_allclose(out["params"][:], ref.params, rtol=1e-5, atol=1e-6)


def test_reading_and_writing_overlap_fitting(tmp_path, monkeypatch):
    """While chunk k is fitted, chunk k+1 is read and chunk k-1 committed: each fit
    waits for both, and would wait forever (here: fail) if they ran in its turn."""
    n = 3 * CHUNK + 40
    x0, y = decay_data(n)
    read = [threading.Event() for _ in range(4)]

    class Reads(Recorder):
        def __getitem__(self, index):
            if isinstance(index, slice) and index.stop - index.start > 2:  # a chunk, not the fingerprint's rows
                read[index.start // CHUNK].set()
            return super().__getitem__(index)

    path, fitted = tmp_path / "out.zarr", []

    def fit_batch(fun, x0, *a, **k):
        i = len(fitted)
        assert i == 3 or read[i + 1].wait(60), f"chunk {i + 1} was not read while chunk {i} was fitted"
        for _ in range(6000 if i else 0):
            if zarr.open_group(path, mode="r")["done"][i - 1]:
                break
            time.sleep(0.01)
        else:
            assert i == 0, f"chunk {i - 1} was not committed while chunk {i} was fitted"
        fitted.append(i)
        return ff.fit_batch(fun, x0, *a, **k)

    monkeypatch.setattr(_stream, "fit_batch", fit_batch)
    t = T.astype("float32")
    out = ff.fit_stream(decay, x0.astype("float32"), (t, Reads(y.astype("float32"))), path, shared_args=(0,), chunk_size=CHUNK, progress=False)
    assert fitted == [0, 1, 2, 3] and out["done"][:].all()


def test_h5py_input(tmp_path):
    h5py = pytest.importorskip("h5py")
    x0, y = decay_data(100)  # chunks of 64 and 36: the programs of the float64 test above
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["y"], f["x0"] = y, x0
    with h5py.File(tmp_path / "data.h5", "r") as f, jax_x64():
        out = ff.fit_stream(decay, f["x0"], (T, f["y"]), tmp_path / "out.zarr", shared_args=(0,), chunk_size=64, progress=False)
        ref = ff.fit_batch(decay, x0[64:], (T, y[64:]), shared_args=(0,))
        np.testing.assert_array_equal(out["params"][64:], ref.params)
        assert out["params"].dtype == np.float64


def jax_x64():
    import jax

    return jax.enable_x64(True)


def test_finished_store_returns_at_once_and_other_problems_are_refused(disk, monkeypatch):
    path, x0, y, first = disk
    t = T.astype("float32")
    path = path / "reference.zarr"
    before = {name: first[name][:] for name in FIELDS}
    monkeypatch.setattr(_stream, "fit_batch", lambda *a, **k: pytest.fail("a finished chunk was fitted again"))
    again = ff.fit_stream(decay, x0, (t, y), path, shared_args=(0,), progress=False)  # chunk_size: the store's
    for name in FIELDS:
        np.testing.assert_array_equal(again[name][:], before[name])

    def refused(match, *a, **k):
        with pytest.raises(ValueError, match=match):
            ff.fit_stream(*a, **{"shared_args": (0,), "chunk_size": CHUNK, "progress": False, **k})

    refused("chunk_size", decay, x0, (t, y), path, chunk_size=50)
    refused("fields", decay, x0, (t, y), path, fields=("params", "cost"))
    refused("fun", lambda p, t, y: decay(p, t, y), x0, (t, y), path)
    refused("options", decay, x0, (t, y), path, ftol=1e-6)
    refused("shared", decay, x0, (t[::-1].copy(), y), path)
    refused("streamed", decay, x0, (t, np.asarray(y)[::-1].copy()), path)  # new data, same shapes
    refused("size", decay, x0[:500], (t, y[:500]), path)
    assert_same_store(zarr.open_group(path, mode="r"), first)  # untouched


def test_bad_input_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(_stream, "fit_batch", lambda *a, **k: pytest.fail("fit_batch was reached"))
    x0, y = decay_data(20)
    (tmp_path / "file.txt").write_text("not a store")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_text("")
    v2 = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    cases = [
        (TypeError, "`out`", dict(out=42)),
        (ValueError, "not a zarr v3 store", dict(out=tmp_path / "file.txt")),
        (ValueError, "not a zarr v3 store", dict(out=tmp_path / "dir")),
        (ValueError, "v2", dict(out=v2)),
        (ValueError, "batch axis", dict(x0=np.float32(1.0))),
        (ValueError, r"`args\[1\]` needs a leading batch axis of length 20", dict(args=(T, y[:19]))),
        (ValueError, "`fields`", dict(fields=("params", "hessian"))),
        (TypeError, "history", dict(history=3)),
        (TypeError, "unexpected option", dict(tolerance=1e-3)),
        (ValueError, "ftol", dict(ftol=-1.0)),
        (ValueError, "shared_args", dict(shared_args=(5,))),
        (TypeError, "chunk_size", dict(chunk_size=2.5)),
    ]
    for error, match, change in cases:
        call = {**dict(fun=decay, x0=x0, args=(T, y), out=tmp_path / "new.zarr", shared_args=(0,), progress=False), **change}
        with pytest.raises(error, match=match):
            ff.fit_stream(call.pop("fun"), call.pop("x0"), call.pop("args"), call.pop("out"), **call)
        assert not (tmp_path / "new.zarr").exists()
    with pytest.raises(ValueError, match="not a fit_stream store"):
        group = zarr.open_group(tmp_path / "other.zarr", mode="w")
        group.create_array("images", shape=(3,), dtype="f4")
        ff.fit_stream(decay, x0, (T, y), group, shared_args=(0,), progress=False)


# --------------------------------------------------------------------------- killed runs

CHILD = """
import os, signal, sys
import numpy as np, zarr
import jax, jax.numpy as jnp
import fitfleet as ff
from fitfleet import _stream

ff.enable_compilation_cache({cache!r})
def decay(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y

kill_at = {kill_at}  # SIGKILL this process before its kill_at-th write of a zarr array
writes = [0]
setitem = zarr.Array.__setitem__
def counting(self, key, value):
    if writes[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    writes[0] += 1
    setitem(self, key, value)
zarr.Array.__setitem__ = counting

x0 = np.load({x0!r}, mmap_mode="r")
y = zarr.open_array({y!r}, mode="r")
ff.fit_stream(decay, x0, (np.linspace(0.0, 6.0, 24).astype("float32"), y), {out!r}, shared_args=(0,),
              chunk_size={chunk}, progress=False)
"""


SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
ENV = dict(os.environ, PYTHONPATH=SRC, JAX_PLATFORMS="cpu")


def run_child(data, kill_at, out):
    script = CHILD.format(cache=str(data / "cache"), kill_at=kill_at, x0=str(data / "x0.npy"), y=str(data / "y.zarr"), out=str(out), chunk=CHUNK)
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_killed_runs_resume_to_the_uninterrupted_store(disk, tmp_path, monkeypatch):
    """Kill a run before any chunk, after one, and in the middle of a chunk's commit
    (two fields written, the rest and the done flag not); then run it to the end."""
    data, x0, y, reference = disk
    t = T.astype("float32")
    path = tmp_path / "out.zarr"
    per_chunk = len(FIELDS) + 1  # writes per commit: the fields, then the flag

    run_child(data, 0, path)  # the store made, nothing committed
    store = zarr.open_group(path, mode="r")
    assert "fitfleet_stream" in store.attrs and store["done"][:].sum() == 0
    run_child(data, per_chunk, path)  # one chunk committed
    assert zarr.open_group(path, mode="r")["done"][:].tolist() == [1] + [0] * 9
    run_child(data, 3 * per_chunk + 2, path)  # three more, then params and cost of the next
    store = zarr.open_group(path, mode="r")
    assert store["done"][:].tolist() == [1] * 4 + [0] * 6
    torn = slice(4 * CHUNK, 5 * CHUNK)
    np.testing.assert_array_equal(store["params"][torn], reference["params"][torn])  # written ...
    assert not store["status"][torn].any()  # ... but not the rest: not done

    fitted = []
    monkeypatch.setattr(_stream, "fit_batch", lambda fun, x0, *a, **k: fitted.append(len(x0)) or ff.fit_batch(fun, x0, *a, **k))
    resumed = ff.fit_stream(decay, x0, (t, y), path, shared_args=(0,), chunk_size=CHUNK, progress=False)
    assert fitted == [CHUNK] * 5 + [N - 9 * CHUNK]  # only the chunks not done
    assert_same_store(resumed, reference)


@pytest.mark.slow
def test_killed_at_random_times_resumes(tmp_path):
    """Kill a plain run after random delays until it finishes; the store equals an
    uninterrupted run's."""
    x0, y = on_disk(tmp_path, n=4000)
    t = T.astype("float32")
    reference = ff.fit_stream(decay, x0, (t, y), tmp_path / "reference.zarr", shared_args=(0,), chunk_size=CHUNK, progress=False)
    path, rng = tmp_path / "out.zarr", np.random.default_rng(1)
    script = CHILD.format(cache=str(tmp_path / "cache"), kill_at=-1, x0=str(tmp_path / "x0.npy"), y=str(tmp_path / "y.zarr"), out=str(path), chunk=CHUNK)
    for attempt in range(30):
        proc = subprocess.Popen([sys.executable, "-c", script], env=ENV)
        try:
            if proc.wait(timeout=rng.uniform(2.0, 8.0)) == 0:
                break
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert attempt > 0  # killed at least once
    assert_same_store(zarr.open_group(path, mode="r"), reference)


# --------------------------------------------------------------------------- two processes

WORKER = """
import sys
import jax
jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=2, process_id=int(sys.argv[1]),
                           initialization_timeout=60)
import numpy as np, zarr, jax.numpy as jnp
import fitfleet as ff
from fitfleet import _stream

ff.enable_compilation_cache({cache!r})
def decay(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y

fitted = []
fit_batch = _stream.fit_batch
_stream.fit_batch = lambda fun, x0, *a, **k: fitted.append(len(x0)) or fit_batch(fun, x0, *a, **k)
x0 = np.load({x0!r}, mmap_mode="r")
y = zarr.open_array({y!r}, mode="r")
out = ff.fit_stream(decay, x0, (np.linspace(0.0, 6.0, 24).astype("float32"), y), {out!r}, shared_args=(0,),
                    chunk_size={chunk}, progress=False)
print("fitted", jax.process_index(), sum(fitted), int(out["done"][:].sum()))
"""


@pytest.mark.slow  # two processes of their own, each compiling
def test_two_processes_equal_one(disk, tmp_path):
    data, _, _, reference = disk
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = WORKER.format(cache=str(data / "cache"), port=port, x0=str(data / "x0.npy"), y=str(data / "y.zarr"), out=str(tmp_path / "out.zarr"), chunk=CHUNK)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
    lines = sorted(line.split() for stdout, _ in outputs for line in stdout.splitlines() if line.startswith("fitted"))
    # chunk k by process k mod 2: 5 full chunks to process 0, 4 and the last to process 1
    assert lines == [["fitted", "0", str(5 * CHUNK), "10"], ["fitted", "1", str(4 * CHUNK + N - 9 * CHUNK), "10"]]
    assert_same_store(zarr.open_group(tmp_path / "out.zarr", mode="r"), reference)
