"""fitfleet.plot: every plot rendered to PNG under Agg, and what it drew checked against
the fit it drew (and, for the confidence band, against the textbook regression band)."""

import os
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy import stats  # noqa: E402

import fitfleet as ff  # noqa: E402
import fitfleet.plot as fp  # noqa: E402
from fitfleet.plot._common import default_names  # noqa: E402

pytestmark = pytest.mark.usefixtures("x64")


def mm_model(p, s):
    return p[0] * s / (p[1] + s)


def mm_residual(p, s, v):
    return (mm_model(p, s) - v) / 0.5


def mm_dict_residual(p, s, v):
    return p["vmax"] * s / (p["km"] + s) - v


def product_residual(p, x, y):  # only a·b is determined
    return p[0] * p[1] * x - y


def two_wells(p):  # minima near p = (1, e) (cost 0.00125) and (-1, 1/e) (0.0112)
    return jnp.array([p[0] ** 2 - 1.0, 0.1 * (p[0] - 1.0) + 0.05, p[1] - jnp.exp(p[0])])


def mm_data(dtype="float64"):
    s = np.linspace(0.5, 30.0, 25)
    v = 29.0 * s / (6.0 + s) + 0.5 * np.random.default_rng(0).normal(size=s.size)
    return jnp.asarray(s, dtype), jnp.asarray(v, dtype)


@pytest.fixture(scope="module")
def mm():
    with jax.enable_x64(True):
        s, v = mm_data()
        res = ff.least_squares(mm_residual, jnp.array([10.0, 10.0]), (s, v))
        return s, v, res


@pytest.fixture(scope="module")
def product():
    with jax.enable_x64(True):
        x = jnp.linspace(0.0, 1.0, 10)
        y = 6.0 * x + 0.01 * jnp.sin(9 * x)
        res = ff.least_squares(product_residual, jnp.array([1.0, 2.0]), (x, y))
        return x, y, res


@pytest.fixture(scope="module")
def ms():
    with jax.enable_x64(True):
        # Few steps: some starts stop at max_steps, which the plots must show.
        return ff.multistart(two_wells, [-3.0, 0.1], [1.5, 10.0], 40, log_scale=[False, True], max_steps=5)


def render(fig, tmp_path, name="plot.png"):
    """Save as PNG and check that something was drawn (not a blank canvas)."""
    path = tmp_path / name
    fig.savefig(path)
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert np.std(image[..., :3]) > 0.05
    return image


def new_ax():
    return Figure(layout="constrained").add_subplot()


def labels_of(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


# --------------------------------------------------------------------------- fit


def test_fit_curve_residuals_and_error_bars(dtype, tmp_path):
    s, v = mm_data(dtype)
    res = ff.least_squares(mm_residual, jnp.array([10.0, 10.0], dtype), (s, v))
    assert res.params.dtype == dtype
    fig = fp.fit(res, mm_model, s, v, 0.5, fig=Figure(layout="constrained"))
    render(fig, tmp_path)
    main, lower = fig.axes
    p = np.asarray(res.params, np.float64)
    (curve,) = [line for line in main.lines if line.get_label() == "fit"]
    xg, yg = curve.get_data()
    assert np.all(np.diff(xg) > 0) and xg[0] == pytest.approx(float(s.min())) and xg[-1] == pytest.approx(float(s.max()))
    np.testing.assert_allclose(yg, p[0] * xg / (p[1] + xg), rtol=1e-5)
    (data,) = main.containers
    np.testing.assert_allclose(data.lines[0].get_ydata(), np.asarray(v, np.float64))
    segments = data.lines[2][0].get_segments()  # one vertical bar per point, ±sigma
    np.testing.assert_allclose([seg[1, 1] - seg[0, 1] for seg in segments], 1.0, rtol=1e-6)
    (points,) = lower.containers
    expected = np.asarray(v, np.float64) - p[0] * np.asarray(s, np.float64) / (p[1] + np.asarray(s, np.float64))
    np.testing.assert_allclose(points.lines[0].get_ydata(), expected, rtol=1e-4, atol=1e-5)
    assert lower.get_ylabel() == "data − fit" and lower.get_xlabel() == "x"
    assert not any(c.get_label().endswith("band") for c in main.collections)


def test_fit_band_is_the_regression_band_of_a_linear_model(tmp_path):
    rng = np.random.default_rng(1)
    x = np.linspace(-1.0, 3.0, 15)
    y = 0.7 + 1.9 * x + 0.3 * rng.normal(size=x.size)
    line = lambda p, x: p[0] + p[1] * x  # noqa: E731
    res = ff.least_squares(lambda p, x, y: (line(p, x) - y) / 0.3, jnp.zeros(2), (jnp.asarray(x), jnp.asarray(y)))
    ax = fp.fit(res, line, x, y, 0.3, band=0.9, residuals=False, ax=new_ax())
    render(ax.figure, tmp_path)
    (band,) = [c for c in ax.collections if c.get_label() == "90% confidence band"]
    # The textbook band: ŷ ± t_{m-2}(0.95) · s · √(x₀ᵀ (XᵀX)⁻¹ x₀), s² = RSS/(m − 2).
    X = np.column_stack([np.ones_like(x), x])
    beta, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    s2 = rss[0] / (x.size - 2)
    xg = np.asarray([line for line in ax.lines if line.get_label() == "fit"][0].get_xdata())
    G = np.column_stack([np.ones_like(xg), xg])
    half = stats.t.ppf(0.95, x.size - 2) * np.sqrt(s2 * np.einsum("gi,ij,gj->g", G, np.linalg.inv(X.T @ X), G))
    vertices = band.get_paths()[0].vertices
    for g, h, centre in zip(xg[::20], half[::20], (G @ beta)[::20]):
        ys = vertices[np.isclose(vertices[:, 0], g), 1]
        assert ys.max() == pytest.approx(centre + h, rel=1e-6) and ys.min() == pytest.approx(centre - h, rel=1e-6)


def test_fit_against_index_for_non_1d_x(tmp_path):
    rng = np.random.default_rng(2)
    xy = rng.uniform(size=(12, 2))
    z = 1.0 + 2.0 * xy[:, 0] - 3.0 * xy[:, 1] + 0.05 * rng.normal(size=12)
    plane = lambda p, xy: p[0] + p[1] * xy[:, 0] + p[2] * xy[:, 1]  # noqa: E731
    res = ff.least_squares(lambda p, xy, z: plane(p, xy) - z, jnp.zeros(3), (jnp.asarray(xy), jnp.asarray(z)))
    fig = fp.fit(res, plane, xy, z, band=True, fig=Figure())
    render(fig, tmp_path)
    main, lower = fig.axes
    assert "index" in lower.get_xlabel()
    (curve,) = [line for line in main.lines if line.get_label() == "fit"]
    np.testing.assert_array_equal(curve.get_xdata(), np.arange(12))
    np.testing.assert_allclose(curve.get_ydata(), np.asarray(plane(res.params, xy)), rtol=1e-10)
    assert [c.get_label() for c in main.collections] == ["95% confidence band"]


def test_fit_batch_members(tmp_path):
    x = jnp.linspace(0.0, 1.0, 8)
    slopes = jnp.array([1.0, 2.0, 3.0])
    y = slopes[:, None] * x + 0.5 + 0.01 * jnp.cos(7 * x)  # per-fit data, shared x
    line = lambda p, x: p[0] + p[1] * x  # noqa: E731
    # A batched Result, as fit_batch returns (vmap compiles one program instead of four).
    res = jax.vmap(lambda y: ff.least_squares(lambda p, x, y: line(p, x) - y, jnp.zeros(2), (x, y)))(y)
    with pytest.raises(ValueError, match="member"):
        fp.fit(res, line, x, y)
    fig = fp.fit(res, line, x, y, member=[0, 2], fig=Figure())
    render(fig, tmp_path)
    main, lower = fig.axes
    assert len(main.containers) == 2 and len(lower.containers) == 2
    np.testing.assert_allclose(main.containers[1].lines[0].get_ydata(), np.asarray(y[2]))
    curve = [line for line in main.lines if line.get_label() == "fit (member 2)"][0]
    np.testing.assert_allclose(curve.get_ydata(), np.asarray(res.params[2, 0] + res.params[2, 1] * curve.get_xdata()), rtol=1e-10)


def test_pyplot_only_when_nothing_is_passed(mm):
    s, v, res = mm
    before = plt.get_fignums()
    fp.fit(res, mm_model, s, v, ax=(new_ax(), new_ax()))
    assert plt.get_fignums() == before
    fig = fp.fit(res, mm_model, s, v)
    try:
        assert plt.get_fignums() == before + [fig.number]
    finally:
        plt.close(fig)


def test_missing_matplotlib_names_the_extra(monkeypatch, ms):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"fitfleet\[plot\]"):
        fp.waterfall(ms)


# --------------------------------------------------------------------------- multi-start


def test_waterfall(ms, tmp_path):
    status, cost = np.asarray(ms.results.status), np.asarray(ms.results.cost)
    failed = int(np.sum(status == ff.Status.MAX_STEPS))
    assert 0 < failed < cost.size  # the plot must show both kinds
    ax = fp.waterfall(ms, threshold=1e-3, ax=new_ax())
    render(ax.figure, tmp_path)
    assert ax.get_yscale() == "log" and ax.get_xlim() == (0.5, cost.size + 0.5)
    floor = 1e-4
    (threshold,) = [line for line in ax.lines if line.get_label().startswith("threshold")]
    assert threshold.get_ydata()[0] == pytest.approx(1e-3 + floor)
    found = int(np.sum(cost - cost[0] <= 1e-3))
    assert f"{found}/{cost.size} starts" in threshold.get_label()
    marked = [line for line in ax.lines if line.get_linestyle() == "None"]
    assert sum(len(line.get_xdata()) for line in marked) == cost.size  # each start once
    (converged,) = [line for line in marked if line.get_label().startswith("converged")]
    ok = np.asarray(ms.results.success)
    np.testing.assert_allclose(converged.get_ydata(), cost[ok] - cost[0] + floor, rtol=1e-12)
    assert f"max_steps ({failed})" in labels_of(ax)


def test_waterfall_threshold_defaults(ms):
    best = float(ms.results.cost[0])
    ax = fp.waterfall(ms, ax=new_ax())  # relative: rtol·|best|
    (line,) = [line for line in ax.lines if line.get_label().startswith("threshold")]
    assert line.get_ydata()[0] == pytest.approx(1.1e-3 * best)
    recorded = types.SimpleNamespace(results=ms.results, threshold=1.92)  # what ms records wins
    ax = fp.waterfall(recorded, ax=new_ax())
    (line,) = [line for line in ax.lines if line.get_label().startswith("threshold")]
    assert line.get_ydata()[0] == pytest.approx(1.92 * 1.1)


def test_parameters(ms, tmp_path):
    p = np.asarray(ms.results.params)
    assert np.all(p[:30, 1] > 0) and np.ptp(p[:30, 0]) > 1  # both optima among the drawn
    ax = fp.parameters(ms, n_best=30, names=["a", "k"], lower=[-3.0, 0.1], upper=[1.5, np.inf], log=[False, True], ax=new_ax())
    render(ax.figure, tmp_path)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "log10 k"]
    assert ax.get_ylim() == (1.5, -0.5)  # first parameter on top
    fits = [line for line in ax.lines if line.get_marker() == "o" and len(line.get_xdata()) == 2]
    assert len(fits) == 30
    (best,) = [line for line in fits if line.get_label().startswith("best")]
    np.testing.assert_allclose(best.get_xdata(), [p[0, 0], np.log10(p[0, 1])])
    drawn = np.sort(np.stack([line.get_xdata() for line in fits]), axis=0)
    np.testing.assert_allclose(drawn, np.sort(np.column_stack([p[:30, 0], np.log10(p[:30, 1])]), axis=0))
    lower, upper = [line for line in ax.lines if line.get_marker() == "|"]
    np.testing.assert_allclose(lower.get_xdata(), [-3.0, -1.0])
    np.testing.assert_allclose(upper.get_xdata(), [1.5])  # no upper bound on k: no bar
    np.testing.assert_array_equal(upper.get_ydata(), [0])


# --------------------------------------------------------------------------- analysis


def test_profile_bounded_and_open(mm, tmp_path):
    s, v, res = mm
    km = float(res.params[1])
    prof = ff.profile(mm_residual, res, (s, v), index=1, grid=km * jnp.linspace(0.7, 1.3, 13), absolute_sigma=True)
    assert np.all(np.isfinite(np.asarray(prof.ci)))
    ax = fp.profile(prof, names=["Vmax", "Km"], ax=new_ax())
    render(ax.figure, tmp_path)
    assert ax.get_xlabel() == "Km"
    (curve,) = [line for line in ax.lines if line.get_label() == "profile"]
    np.testing.assert_allclose(curve.get_xdata(), np.asarray(prof.values))
    np.testing.assert_allclose(curve.get_ydata(), np.asarray(prof.statistic))
    (threshold,) = [line for line in ax.lines if line.get_label().startswith("χ²₁(95%)")]
    assert threshold.get_ydata()[0] == pytest.approx(3.841458820694124)
    ends = sorted(line.get_xdata()[0] for line in ax.lines if line.get_color() == "C2")
    np.testing.assert_allclose(ends, np.asarray(prof.ci))
    assert not [t for t in ax.texts if t.get_text() == "open"]

    # A grid too narrow to reach the threshold on either side: both ends open.
    narrow = ff.profile(mm_residual, res, (s, v), index=1, grid=km * jnp.linspace(0.99, 1.01, 13), absolute_sigma=True)
    assert np.all(np.isinf(np.asarray(narrow.ci)))
    fig = fp.profile({"narrow": narrow, "Km": prof}, fig=Figure(layout="constrained"))
    render(fig, tmp_path, "two.png")
    left, right = fig.axes
    assert (left.get_xlabel(), right.get_xlabel()) == ("narrow", "Km")
    arrows = [t for t in left.texts if t.get_text() == "open"]
    assert len(arrows) == 2 and not [line for line in left.lines if line.get_color() == "C2"]
    assert sorted(t.xy[0] for t in arrows) == pytest.approx([0.99 * km, 1.01 * km])


def test_spectrum(product, tmp_path):
    _, _, res = product
    ident = ff.identifiability(res, log_params=True)
    fig = fp.spectrum(ident, names=["a", "b"], fig=Figure(layout="constrained"))
    render(fig, tmp_path)
    ladder, heat = fig.axes[:2]
    assert ladder.get_yscale() == "log"
    lam = np.asarray(ident.eigenvalues)
    rungs = [line for line in ladder.lines if len(line.get_xdata()) == 2 and line.get_xdata()[0] == 0.1]
    assert len(rungs) == 2
    assert rungs[0].get_ydata()[0] == pytest.approx(lam[0])
    # The sloppy direction (a·b fixed) is undetermined: drawn red, at the bottom if 0.
    assert np.asarray(ident.undetermined).tolist() == [False, True]
    assert rungs[1].get_color() == "C3" and rungs[0].get_color() == "C0"
    assert rungs[1].get_ydata()[0] < float(ident.threshold)
    (image,) = heat.images
    np.testing.assert_allclose(image.get_array(), np.asarray(ident.eigenvectors).T ** 2)
    np.testing.assert_allclose(np.asarray(image.get_array())[1], [0.5, 0.5], atol=1e-6)
    assert [t.get_text() for t in heat.get_xticklabels()] == ["a", "b"]


def test_correlation_names_from_a_dict_fit(tmp_path):
    s, v = mm_data()
    res = ff.least_squares(mm_dict_residual, {"vmax": 10.0, "km": 10.0}, (s, v))
    ax = fp.correlation(res, ax=new_ax())
    render(ax.figure, tmp_path)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["km", "vmax"]  # ravel_pytree order
    (image,) = ax.images
    corr = np.asarray(ff.uncertainty(res).corr)
    np.testing.assert_allclose(image.get_array(), corr)
    assert image.get_clim() == (-1.0, 1.0) and image.get_cmap().name == "RdBu_r"
    assert corr[0, 1] > 0.5 and f"{corr[0, 1]:.2f}" in [t.get_text() for t in ax.texts]


def test_default_names():
    assert default_names(jnp.zeros(3)) == ["p[0]", "p[1]", "p[2]"]
    assert default_names({"w": jnp.zeros((2, 2)), "b": 0.0}) == ["b", "w[0,0]", "w[0,1]", "w[1,0]", "w[1,1]"]
    assert default_names((1.0, jnp.zeros(2))) == ["p[0]", "p[1][0]", "p[1][1]"]


# --------------------------------------------------------------------------- histories


def lm_path(s, v, n_steps=8):
    """LM's real path, one row per iteration (a history built by hand, with 3 rows of
    padding): the fit stopped after k steps, for k = 0, 1, ..."""
    fits = [ff.least_squares(mm_residual, jnp.array([10.0, 10.0]), (s, v), max_steps=k) for k in range(n_steps)]
    params = np.stack([np.asarray(f.params) for f in fits] + [np.full(2, 1e9)] * 3)
    cost = np.concatenate([[float(f.cost) for f in fits], [1e9] * 3])
    return params, cost


def test_history(mm, tmp_path):
    s, v, res = mm
    params, cost = lm_path(s, v)
    damping = np.where(np.arange(cost.size) < 8, 1e-3 * 0.3 ** np.arange(cost.size), np.nan)
    h = types.SimpleNamespace(params=params, cost=cost, damping=damping, length=np.asarray(8))
    walked = types.SimpleNamespace(params=res.params, residual=res.residual, history=h)  # a Result with a history
    fig = fp.history(walked, names=["Vmax", "Km"], fig=Figure())
    render(fig, tmp_path)
    top, middle, bottom = fig.axes
    np.testing.assert_allclose(top.lines[0].get_ydata(), cost[:8])  # padding dropped
    assert top.get_yscale() == "log" and bottom.get_yscale() == "log"
    assert cost[7] < cost[0] / 10  # a real descent
    np.testing.assert_allclose(middle.lines[1].get_ydata(), params[:8, 1])
    assert labels_of(middle) == ["Vmax", "Km"]
    np.testing.assert_allclose(bottom.lines[0].get_ydata(), damping[:8])

    # A batch: a leading axis on every field, member picks; no damping: two panels.
    batch = types.SimpleNamespace(params=params[None].repeat(2, 0), cost=np.stack([cost, 2 * cost]),
                                  damping=np.full((2, cost.size), np.nan), length=np.array([8, 5]))  # fmt: skip
    batched = types.SimpleNamespace(params=jnp.stack([res.params] * 2), residual=jnp.stack([res.residual] * 2), history=batch)
    fig = fp.history(batched, member=1, fig=Figure())
    assert len(fig.axes) == 2
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), 2 * cost[:5])
    with pytest.raises(ValueError, match="history=True"):
        fp.history(res)


def test_recorded_history_is_lm_path(mm):
    """The solver's own history (history=True) is the path of fits stopped after k steps."""
    s, v, res = mm
    params, cost = lm_path(s, v)
    with jax.enable_x64(True):
        recorded = ff.least_squares(mm_residual, jnp.array([10.0, 10.0]), (s, v), history=True).history
    n = int(recorded.length)  # the start and one row per accepted step
    assert 3 <= n <= 8 and np.isnan(recorded.params[n:]).all()
    np.testing.assert_allclose(recorded.params[:n], params[:n], rtol=1e-12)
    np.testing.assert_allclose(recorded.cost[:n], cost[:n], rtol=1e-12)


def test_landscape(mm, tmp_path):
    s, v, res = mm
    params, cost = lm_path(s, v)
    with jax.enable_x64(True):
        walked = ff.least_squares(mm_residual, jnp.array([10.0, 10.0]), (s, v), history=8)
    ax = fp.landscape(mm_residual, (s, v), [walked, res], labels=["lm", "final"], names=["Vmax", "Km"], n_grid=40, ax=new_ax())
    render(ax.figure, tmp_path)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Vmax", "Km")
    n = int(walked.history.length)
    (path,) = [line for line in ax.lines if line.get_label() == f"lm ({n - 1} steps)"]
    np.testing.assert_allclose(path.get_xdata(), params[:n, 0])
    np.testing.assert_allclose(path.get_ydata(), params[:n, 1])
    assert "final (no history)" in labels_of(ax)
    # The contoured values: ½‖r‖² on the grid the axes span, in numpy.
    (a0, a1), (b0, b1) = ax.get_xlim(), ax.get_ylim()
    assert a0 < params[:8, 0].min() and a1 > params[:8, 0].max() and b0 < params[:8, 1].min()
    A, B = np.meshgrid(np.linspace(a0, a1, 40), np.linspace(b0, b1, 40))
    sn, vn = np.asarray(s), np.asarray(v)
    grid_cost = 0.5 * np.sum(((A[..., None] * sn / (B[..., None] + sn) - vn) / 0.5) ** 2, axis=-1)
    filled = [c for c in ax.collections if hasattr(c, "levels")][0]
    assert filled.zmin == pytest.approx(np.log10(grid_cost.min())) and filled.zmax == pytest.approx(np.log10(grid_cost.max()))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "picture"), [("multistart_plots", "multistart"), ("profile_plots", "profile"), ("quickstart", "quickstart")]
)
def test_examples_write_their_pictures(script, picture, tmp_path):
    repo = pathlib.Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    command = [sys.executable, str(repo / "examples" / f"{script}.py"), "--out", str(tmp_path)]
    subprocess.run(command, check=True, env=env, timeout=600)
    image = matplotlib.image.imread(tmp_path / f"{picture}.png")
    assert image.shape[1] > 1000 and np.std(image[..., :3]) > 0.05
