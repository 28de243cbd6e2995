"""The PEtab path end to end in the default run, on the smallest benchmark problem
(Perelson 1996: 3 parameters, 16 data points): ``python -m fitfleet.petab`` (its
``main``) with a few starts, checked against the best known optimum, scipy's refits of
the NLL at the profiles' interval ends, and its own results file; then a checkpointed
multi-start interrupted between chunks resumes and skips the finished starts."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("petab")
pytest.importorskip("libsbml")
scipy_optimize = pytest.importorskip("scipy.optimize")

import jax  # noqa: E402
from test_saving import assert_same  # noqa: E402

import fitfleet as ff  # noqa: E402
import fitfleet.petab as fp  # noqa: E402
from fitfleet import _saving  # noqa: E402
from fitfleet._profile_walk import Verdict  # noqa: E402
from fitfleet.petab import _checkpoint  # noqa: E402
from fitfleet.petab._cli import main  # noqa: E402

PERELSON = Path(__file__).resolve().parent / "data" / "petab" / "Perelson_Science1996"
BEST_KNOWN = 222.2807689  # pyPESTO's objective, 2026 benchmark of 33 optimisers (issue #20)
STARTS, EVERY, SEED = 8, 4, 1  # two checkpoint chunks


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The command line (progress bars on, captured), all parameters profiled; returns
    (output folder, what it wrote to stderr)."""
    out = tmp_path_factory.mktemp("perelson") / "run"
    argv = [str(PERELSON), "--starts", str(STARTS), "--checkpoint-every", str(EVERY), "--seed", str(SEED), "--out", str(out), "--no-cache"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    return out, err.getvalue()


@pytest.fixture(scope="module")
def problem(run):
    """The same problem through the API, loaded as the command line does (float64,
    default solver): the same content, so it reuses the compiled programs."""
    with jax.enable_x64(True):
        return fp.load(PERELSON)


def test_cli_reaches_the_best_known_optimum_and_reports_it(run, problem, x64):
    out, err = run
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "parameters.png", "profiles.png", "results.npz", "summary.txt", "waterfall.png"]
    ms = ff.MultiStartResult.load(out / "results.npz")
    info = ff.MultiStartResult.load_info(out / "results.npz")
    assert info["names"] == list(problem.names) and info["seed"] == SEED
    assert sorted(map(tuple, np.asarray(ms.starts))) == sorted(map(tuple, np.asarray(problem.sample_starts(STARTS, jax.random.key(SEED)))))
    nll = np.asarray(ms.results.cost, np.float64) + info["offset"]
    assert nll[0] == pytest.approx(BEST_KNOWN, abs=1e-4)
    assert float(problem.nll(ms.best.params)) == pytest.approx(nll[0], rel=1e-9)  # the file's value is the model's NLL
    # The summary states what the results file holds.
    text = (out / "summary.txt").read_text()
    found = int(np.sum(nll - nll[0] <= 1.92))
    assert f"best value found   = {found} times (NLL within 1.92 of the best" in text
    assert f"success fraction p* = {found / STARTS:.3g}" in text
    codes, counts = np.unique(np.asarray(ms.results.status), return_counts=True)
    for code, count in zip(codes, counts):
        assert f"{count} {ff.Status(int(code)).name.lower()}" in text
    assert f"best NLL           = {nll[0]:.6g}" in text and "[[Profiles]]" in text and "[[Best fit]]" in text
    # Progress bars on stderr: the starts, then the profiles.
    assert "multi-start: 100%" in err and f"{STARTS}/{STARTS}" in err and "profiles: 100%" in err
    import matplotlib.image

    for name in ("waterfall", "parameters", "profiles"):
        assert matplotlib.image.imread(out / f"{name}.png").shape[0] > 200


def test_profile_intervals_match_scipy_refits(run, problem, x64):
    """Each 95% interval end: the NLL minimised over the other parameters by scipy
    (Nelder-Mead on ``prob.nll``, from the best fit and from the profile's nearest
    refit) is 1.92 above the optimum; Perelson's three parameters are identifiable."""
    ms = ff.MultiStartResult.load(run[0] / "results.npz")
    profiles = problem.profile(ms)
    nll = jax.jit(problem.nll)
    best = float(nll(ms.best.params))
    for i, name in enumerate(problem.names):
        prof = profiles[name]
        assert int(prof.verdict) == Verdict.IDENTIFIABLE, prof.verdict_text
        assert f"{name}  " in (run[0] / "summary.txt").read_text()
        for end in np.asarray(prof.ci):
            assert problem.lower[i] < end < problem.upper[i]
            j = int(np.argmin(np.abs(np.asarray(prof.values) - end)))
            free = [k for k in range(len(problem.names)) if k != i]

            def fixed(z, end=end, i=i, free=free):
                x = np.empty(len(problem.names))
                x[i], x[free] = end, z
                return float(nll(x))

            refits = [scipy_optimize.minimize(fixed, np.asarray(x0, np.float64)[free], method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-9})
                      for x0 in (ms.best.params, np.asarray(prof.params)[j])]  # fmt: skip
            assert 2 * (min(r.fun for r in refits) - best) == pytest.approx(3.841, abs=0.03), (name, end)


def test_checkpoint_resumes_an_interrupted_multistart(run, problem, x64, tmp_path, monkeypatch):
    """Interrupted (an exception) after its first committed chunk, the multi-start
    resumes from the checkpoint, fits only the rest, and ends equal to the command
    line's uninterrupted run; a complete checkpoint fits nothing; another run's
    checkpoint is refused, naming what differs."""
    path = tmp_path / "checkpoint.npz"
    commit, sizes = _checkpoint._commit, []

    def interrupt_after_first(*a):
        commit(*a)
        raise KeyboardInterrupt

    monkeypatch.setattr(_checkpoint, "_commit", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        problem.multistart(STARTS, key=jax.random.key(SEED), checkpoint=path, checkpoint_every=EVERY, method="trf")
    monkeypatch.setattr(_checkpoint, "_commit", commit)
    assert _saving.read(path, _checkpoint.FORMAT)[1]["n_done"] == EVERY  # one chunk committed
    fit_batch = fp._problem.fit_batch
    monkeypatch.setattr(fp._problem, "fit_batch", lambda fun, x0, *a, **k: sizes.append(len(x0)) or fit_batch(fun, x0, *a, **k))
    ms = problem.multistart(STARTS, key=jax.random.key(SEED), checkpoint=path, checkpoint_every=EVERY, method="trf")
    assert sizes == [STARTS - EVERY]
    assert_same(jax.tree_util.tree_map(np.asarray, ms), ff.MultiStartResult.load(run[0] / "results.npz"))
    assert problem.multistart(STARTS, key=jax.random.key(SEED), checkpoint=path, checkpoint_every=EVERY, method="trf").n_starts == STARTS
    assert sizes == [STARTS - EVERY]  # complete: nothing fitted again
    with pytest.raises(ValueError, match="starts"):
        problem.multistart(STARTS, key=jax.random.key(SEED + 1), checkpoint=path, method="trf")
    with pytest.raises(ValueError, match="options"):
        problem.multistart(STARTS, key=jax.random.key(SEED), checkpoint=path, method="trf", max_steps=7)


CASE_0010 = Path(__file__).resolve().parent / "data" / "petab" / "petabtests" / "0010" / "_0010.yaml"  # pre-equilibration


def test_cli_refuses_an_opt_in_feature_naming_its_flag(tmp_path):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as refused:
        main([str(CASE_0010), "--starts", "2", "--out", str(tmp_path), "--quiet"])
    assert refused.value.code == 2 and "--preequilibration" in stderr.getvalue()


def test_cli_refuses_a_table_for_the_yaml(tmp_path):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as refused:
        main([str(PERELSON / "measurementData_Perelson_Science1996.tsv"), "--out", str(tmp_path), "--quiet"])
    assert refused.value.code == 2 and "not a PEtab yaml" in stderr.getvalue()


@pytest.mark.slow
def test_cli_refuses_another_runs_checkpoint_without_a_traceback(run, tmp_path):
    out, _ = run
    (tmp_path / "checkpoint.npz").write_bytes((out / "checkpoint.npz").read_bytes())
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as refused:
        main([str(PERELSON), "--starts", str(STARTS + 1), "--seed", str(SEED), "--out", str(tmp_path), "--quiet"])
    assert refused.value.code == 2 and "starts" in stderr.getvalue() and "--restart" in stderr.getvalue()


@pytest.mark.slow
def test_cli_runs_with_an_opt_in_feature(tmp_path):
    main([str(CASE_0010), "--starts", "2", "--out", str(tmp_path), "--quiet", "--preequilibration", "--no-plots", "--no-profiles", "--no-checkpoint"])
    ms = ff.MultiStartResult.load(tmp_path / "results.npz")
    assert ms.n_starts == 2 and np.all(np.isfinite(np.asarray(ms.results.cost)))
