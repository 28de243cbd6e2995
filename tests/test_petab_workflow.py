"""The PEtab workflow end to end, beyond ``test_petab_cli.py`` (the default run's: the
command line on Perelson).

Default run: the command line's help.  Slow: the closed-form toy problem
(tests/petab_toy.py) through the command line, its profiles and verdicts against the
closed-form likelihood minimised by scipy, one compiled program for all profiles, a
checkpoint that resumes and one that survives SIGKILL; the petab extra without scipy;
Boehm's identifiability.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("petab")
pytest.importorskip("libsbml")
diffrax = pytest.importorskip("diffrax")
scipy_optimize = pytest.importorskip("scipy.optimize")

import jax  # noqa: E402
import petab_toy as toy  # noqa: E402
from conftest import count_compilations  # noqa: E402
from test_saving import assert_same  # noqa: E402

import fitfleet as ff  # noqa: E402
import fitfleet.petab as fp  # noqa: E402
from fitfleet import _saving  # noqa: E402
from fitfleet._profile_walk import Verdict  # noqa: E402
from fitfleet.petab import _checkpoint  # noqa: E402
from fitfleet.petab._cli import main, parser  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "petab"
STARTS, EVERY, SEED = 8, 4, 1  # two checkpoint chunks
PERELSON, PERELSON_BEST = DATA / "Perelson_Science1996", 222.2807689  # best known optimum (issue #20)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The command line on the toy (an explicit solver: the toy is not stiff, and it
    compiles faster), profiling one parameter; returns (yaml, output folder)."""
    folder = tmp_path_factory.mktemp("toy")
    yaml = toy.write(folder / "problem")
    out = folder / "run"
    argv = [str(yaml), "--starts", str(STARTS), "--checkpoint-every", str(EVERY), "--seed", str(SEED), "--out", str(out)]
    assert main([*argv, "--solver", "Tsit5", "--profile", "k", "--no-cache", "--quiet"]) == 0
    return yaml, out


@pytest.fixture(scope="module")
def problem(run):
    """The same problem through the API (same content and settings as the command line's:
    it reuses the compiled programs; loaded in float64 as the command line does, so the
    pilot solve gives the same tolerances)."""
    with jax.enable_x64(True):
        return fp.load(run[0], solver=diffrax.Tsit5())


def linear(prob, x):
    return {n: {"lin": v, "log": np.exp(v), "log10": 10.0**v}[s] for n, v, s in zip(prob.names, np.asarray(x, np.float64), prob.scales)}


def closed_form_min(prob, x0, fixed=None):
    """min of the toy's closed-form NLL over the estimation scale within the bounds (the
    parameter ``fixed = (name, value)`` held), by scipy's L-BFGS-B from the points x0."""
    i = None if fixed is None else prob.names.index(fixed[0])
    free = [j for j in range(len(prob.names)) if j != i]

    def nll(z):
        x = np.empty(len(prob.names))
        x[free] = z
        if i is not None:
            x[i] = fixed[1]
        return toy.reference_nll(linear(prob, x))

    bounds = list(zip(prob.lower[free], prob.upper[free]))
    fits = [scipy_optimize.minimize(nll, np.asarray(x, np.float64)[free], method="L-BFGS-B", bounds=bounds, options={"ftol": 1e-15, "gtol": 1e-10}) for x in x0]
    return min(f.fun for f in fits)


def end_statistic(prob, prof, ms, best, end):
    """Δ = 2 ΔNLL of the closed form at ``prof``'s parameter fixed at ``end``, minimised by
    scipy from the best fit and from the profile's refit nearest to ``end`` (from the
    best fit alone L-BFGS-B can stop at another local minimum: sd_A's upper end)."""
    j = int(np.argmin(np.abs(np.asarray(prof.values) - end)))
    return 2 * (closed_form_min(prob, [np.asarray(prof.params)[j], ms.best.params], fixed=(prof.name, end)) - best)


@pytest.mark.slow
def test_toy_cli_writes_results_summary_and_plots(run, problem, x64):
    yaml, out = run
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "parameters.png", "profiles.png", "results.npz", "summary.txt", "waterfall.png"]
    ms = ff.MultiStartResult.load(out / "results.npz")
    info = ff.MultiStartResult.load_info(out / "results.npz")
    assert info["names"] == list(problem.names) and info["seed"] == SEED and info["offset"] == pytest.approx(problem.offset, rel=1e-12)
    assert sorted(map(tuple, np.asarray(ms.starts))) == sorted(map(tuple, np.asarray(problem.sample_starts(STARTS, jax.random.key(SEED)))))
    # The best NLL: the closed form at the best parameters, and no lower minimum nearby.
    nll = np.asarray(ms.results.cost, np.float64) + info["offset"]
    assert nll[0] == pytest.approx(toy.reference_nll(linear(problem, ms.best.params)), rel=1e-6)
    assert nll[0] <= closed_form_min(problem, [ms.best.params, problem.nominal]) + 1e-6
    # The summary counts what the file holds.
    text = (out / "summary.txt").read_text()
    found = int(np.sum(nll - nll[0] <= 1.92))
    assert f"best value found   = {found} times (NLL within 1.92 of the best" in text
    codes, counts = np.unique(np.asarray(ms.results.status), return_counts=True)
    for code, count in zip(codes, counts):
        assert f"{count} {ff.Status(int(code)).name.lower()}" in text
    assert f"best NLL           = {nll[0]:.6g}" in text and "[[Profiles]]" in text and "[[Best fit]]" in text
    import matplotlib.image

    for name in ("waterfall", "parameters", "profiles"):
        assert matplotlib.image.imread(out / f"{name}.png").shape[0] > 200


@pytest.mark.slow
def test_toy_profile_matches_the_closed_form_profile(run, problem, x64):
    """Δ at the profile's grid points and at its interval's ends against scipy's refits
    of the closed-form NLL; the interval is the summary's."""
    ms = ff.MultiStartResult.load(run[1] / "results.npz")
    prof = problem.profile(ms, names=["k"])["k"]
    assert prof.name == "k" and prof.index == 0 and int(prof.verdict) == Verdict.IDENTIFIABLE
    best = closed_form_min(problem, [ms.best.params])
    values, stat, params = np.asarray(prof.values), np.asarray(prof.statistic), np.asarray(prof.params)
    near = np.flatnonzero(stat < 10)[:: max(1, np.sum(stat < 10) // 4)]
    for j in near:
        reference = 2 * (closed_form_min(problem, [params[j], ms.best.params], fixed=("k", values[j])) - best)
        assert stat[j] == pytest.approx(reference, abs=2e-3 * max(1.0, reference))
    for end in np.asarray(prof.ci):
        assert end_statistic(problem, prof, ms, best, end) == pytest.approx(3.841, abs=0.05)
    lo, hi = np.asarray(prof.ci)
    assert f"{float(prof.estimate):>10.5g}  {lo:>10.5g}  {hi:>10.5g}  identifiable" in (run[1] / "summary.txt").read_text()


@pytest.mark.slow
def test_toy_profiles_of_all_parameters_share_one_program(run, problem, x64):
    """After one parameter, the others compile nothing of the profile (``jit(stage)``
    is jnp.asarray's transfer of a new shape); verdicts against the closed form."""
    ms = ff.MultiStartResult.load(run[1] / "results.npz")
    problem.profile(ms, names=["k"])
    with count_compilations() as compiled:
        profiles = problem.profile(ms, names=["k2", "sd_A", "scale_A"], progress=False)
    assert [c for c in compiled if c != "jit(stage)"] == []
    x = dict(zip(problem.names, np.asarray(ms.best.params)))
    assert x["k2"] == pytest.approx(problem.lower[1], abs=1e-12)  # on its lower bound (0, to round-off): one-sided
    assert int(profiles["k2"].verdict) == Verdict.ONE_SIDED
    best = closed_form_min(problem, [ms.best.params])
    for name in ("sd_A", "scale_A"):
        assert int(profiles[name].verdict) == Verdict.IDENTIFIABLE
        for end in np.asarray(profiles[name].ci):
            assert end_statistic(problem, profiles[name], ms, best, end) == pytest.approx(3.841, abs=0.05)


@pytest.mark.slow
def test_toy_checkpoint_resumes_an_interrupted_multistart(run, problem, x64, tmp_path, monkeypatch):
    """Interrupted after its first chunk, the multi-start resumes from the checkpoint,
    fits only the rest, and ends equal to the command line's uninterrupted run."""
    path = tmp_path / "checkpoint.npz"
    commit, sizes = _checkpoint._commit, []

    def interrupt_after_first(*a):
        commit(*a)
        raise KeyboardInterrupt

    monkeypatch.setattr(_checkpoint, "_commit", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        problem.multistart(STARTS, key=jax.random.key(SEED), checkpoint=path, checkpoint_every=EVERY, method="trf")
    monkeypatch.setattr(_checkpoint, "_commit", commit)
    fit_batch = fp._problem.fit_batch
    monkeypatch.setattr(fp._problem, "fit_batch", lambda fun, x0, *a, **k: sizes.append(len(x0)) or fit_batch(fun, x0, *a, **k))
    ms = problem.multistart(STARTS, key=jax.random.key(SEED), checkpoint=path, checkpoint_every=EVERY, method="trf")
    # The rest, and (``_verify``) any of them continued at tighter tolerances.
    assert sizes[0] == STARTS - EVERY and all(size <= sizes[0] for size in sizes[1:])
    assert_same(jax.tree_util.tree_map(np.asarray, ms), ff.MultiStartResult.load(run[1] / "results.npz"))
    fitted = list(sizes)
    assert problem.multistart(STARTS, key=jax.random.key(SEED), checkpoint=path, checkpoint_every=EVERY, method="trf").n_starts == STARTS
    assert sizes == fitted  # complete: nothing fitted again
    with pytest.raises(ValueError, match="starts"):
        problem.multistart(STARTS, key=jax.random.key(SEED + 1), checkpoint=path, method="trf")
    with pytest.raises(ValueError, match="options"):
        problem.multistart(STARTS, key=jax.random.key(SEED), checkpoint=path, method="trf", max_steps=7)


@pytest.mark.slow
def test_checkpoint_survives_sigkill(run, problem, x64, tmp_path):
    """A process killed (SIGKILL) after its first committed chunk; the rerun skips it
    and ends equal to an uninterrupted run."""
    path = tmp_path / "checkpoint.npz"
    script = textwrap.dedent(f"""
        import sys, time, jax, diffrax
        jax.config.update("jax_enable_x64", True)
        import fitfleet.petab as fp
        from fitfleet.petab import _checkpoint
        commit = _checkpoint._commit
        def commit_then_hang(*a):
            commit(*a)
            print("committed", flush=True)
            time.sleep(3600)
        _checkpoint._commit = commit_then_hang
        prob = fp.load({str(run[0])!r}, solver=diffrax.Tsit5())
        prob.multistart({STARTS}, key=jax.random.key({SEED}), checkpoint={str(path)!r}, checkpoint_every={EVERY}, method="trf")
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    try:
        assert child.stdout.readline().strip() == "committed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert _saving.read(path, _checkpoint.FORMAT)[1]["n_done"] == EVERY  # the first chunk, intact
    ms = problem.multistart(STARTS, key=jax.random.key(SEED), checkpoint=path, checkpoint_every=EVERY, method="trf")
    assert_same(jax.tree_util.tree_map(np.asarray, ms), ff.MultiStartResult.load(run[1] / "results.npz"))


def test_help_documents_the_command_line():
    text = parser().format_help()
    for option in ("--starts", "--out", "--seed", "--method", "--no-profiles", "--checkpoint", "--restart", "results.npz", "summary.txt", "waterfall.png"):
        assert option in text
    assert re.search(r"--no-check(?!point)", text)  # the end-point check (fitfleet.petab._verify)


@pytest.mark.slow  # a process of its own, compiling the toy again
def test_petab_runs_without_scipy(tmp_path):
    """scipy is a reference tool for the tests, not a run-time dependency: with it
    unimportable, a problem loads (the pilot solve sets the tolerances) and evaluates."""
    yaml = toy.write(tmp_path / "problem")
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "scipy" or name.startswith("scipy."):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        import jax, diffrax
        jax.config.update("jax_enable_x64", True)
        import fitfleet.petab as fp
        prob = fp.load({str(yaml)!r}, solver=diffrax.Tsit5())
        print(repr(float(prob.nll(prob.nominal))))
        print(prob.state_scales.tolist())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    nll, scales = out.stdout.strip().splitlines()[-2:]
    assert float(nll) == pytest.approx(toy.reference_nll({**toy.NOMINAL}), rel=1e-6)
    # The states' largest values over the measurement times at the nominal parameters
    # (A decays from its start, 5 in c2; B, an amount, grows as 12 + k2 t in c2 up to
    # t = 3; C = 2 a0; p = r t, largest in c2 at t = 3).
    assert eval(scales) == pytest.approx([5.0, 12 + 0.5 * 3, 3.0, 2.5 * 3], rel=1e-3)


# --- Boehm (slow: its profiles take minutes) ------------------------------------------


@pytest.mark.slow
def test_boehm_profiles_two_rates_are_not_identifiable(x64):
    """Boehm et al. 2014: k_exp_hetero and k_imp_homo sit on their bounds and are not
    identifiable; the other seven parameters are (the benchmark collection's finding)."""
    prob = fp.load(DATA / "Boehm_JProteomeRes2014")
    res = prob.fit(prob.nominal)
    assert abs(float(res.cost) + prob.offset - 138.2219682) < 1e-3
    profiles = prob.profile(res)
    verdicts = {name: Verdict(int(p.verdict)) for name, p in profiles.items()}
    for name in ("k_exp_hetero", "k_imp_homo"):
        assert verdicts[name] in (Verdict.ONE_SIDED, Verdict.BOUND, Verdict.OPEN, Verdict.FLAT), (name, verdicts)
    assert [n for n, v in verdicts.items() if v == Verdict.IDENTIFIABLE] == [n for n in prob.names if n not in ("k_exp_hetero", "k_imp_homo")]
    for name, p in profiles.items():
        assert float(np.min(p.statistic)) > -0.02, name  # no profile point below the optimum
    # The refits converge: at k_exp_homo's interval ends, refits to tight stopping tests
    # give Δ at the threshold (fitfleet's generic defaults had stopped them 0.4 above it).
    name = "k_exp_homo"
    ends = np.asarray(profiles[name].ci)
    tight = prob.profile(res, [name], grid={name: ends}, fatol=1e-12, settle=True, max_steps=5000)[name]
    np.testing.assert_allclose(tight.statistic, profiles[name].threshold, atol=0.03)
