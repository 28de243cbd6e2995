"""The front door: ``least_squares(fun, x0, args, ...) -> Result``."""

import equinox as eqx

from . import _driver, _problem, _validate, _xla
from ._setup import DEFAULTS, prepare


def least_squares(
    fun,
    x0,
    args=(),
    *,
    method="lm",
    jac="auto",
    ftol=1e-8,
    xtol=1e-8,
    gtol=1e-8,
    settle=True,
    fatol=0.0,
    max_steps=None,
    max_nfev=None,
    x_scale=None,
    sigma=None,
    bounds=None,
    log_scale=False,
    loss="linear",
    f_scale=1.0,
    learning_rate=None,
    initial_damping=1e-3,
    acceleration=None,
    secant=None,
    subspace="full",
    adjoint="implicit",
    grad_on_failure="nan",
    history=False,
    verbose=0,
    progress=False,
    kwargs=None,
):
    """Minimise ½‖fun(params, *args)‖² over ``params``, starting from ``x0``.

    Args:
        fun: ``fun(params, *args)`` returning the residuals, a floating array of any
            shape (treated as flat), written in ``jax.numpy``.
        x0: starting parameters, an array or a pytree of arrays (a list or tuple of
            plain numbers is an array, as in scipy).  Its dtype sets the precision of
            the fit (float32 or float64); integers become floats.
        args: a tuple of extra arguments to ``fun`` (arrays or pytrees of arrays; a
            list of numbers is an array), traced, so new data of the same shape does
            not recompile.
        method: ``"lm"`` (Levenberg-Marquardt, the default), ``"trf"`` (trust-region
            reflective, scipy's default method: bounds enforced by the method itself),
            ``"gn"`` (Gauss-Newton with backtracking), ``"adam"`` or ``"sgd"`` (optax
            baselines), or any ``optax.GradientTransformation``.
        jac: ``"auto"`` (forward mode when there are no more parameters than residuals,
            else reverse mode; the other one where ``fun`` cannot be differentiated in
            that mode: a ``custom_vjp`` such as diffrax's default adjoint has no forward
            mode), ``"fwd"``, ``"rev"``, or a callable
            ``jac(params, *args)`` returning the (m, n) Jacobian (or the pytree
            ``jax.jacfwd`` would return).  scipy's finite-difference schemes
            (``"2-point"``, ``"3-point"``, ``"cs"``) mean ``"auto"``: derivatives are exact.
        ftol: stop when an accepted step reduces the cost F by ``F_old - F_new <= ftol·F_old``
            and the reduction agreed with the model's (ratio > 1/4), and (``settle``) no
            parameter moved by more than ``√ftol·(√ftol + |p_j|)`` in that step.
        xtol: stop when the proposed full step (see the README's stopping tests)
            satisfies ``‖δ‖ <= xtol·(xtol + ‖p‖)``.
        gtol: stop when ``max_j |(Jᵀr)_j| / (‖J_j‖·‖r‖) <= gtol`` (the cosine between the
            residual and each Jacobian column; for optax methods ``‖Jᵀr‖∞ <= gtol``).
            A tolerance of 0 (or ``None``, as in scipy) disables its test.  ``"trf"`` uses scipy's trf tests
            (``fitfleet._solvers.trust_region_reflective``): gtol on ``‖v·∇F‖∞``, v the
            distances to the bounds the gradient points at (1 unbounded), and
            ftol/xtol on every proposed step.
        settle: whether ``ftol`` also asks every parameter to have settled (above;
            fitfleet's addition, default): a step that barely lowers the cost while it
            moves a parameter far is crossing a flat valley, not converging (without it
            NIST's ENSO and MGH09 stop with 3 correct digits, as scipy's do).  ``False``:
            scipy's ftol test as scipy states it (as with ``ftol = 0 < fatol``, where
            √ftol is no scale).  That suits a likelihood whose flat directions are
            non-identifiable parameters, where the drift along the valley changes the
            fit by less than ``ftol`` (``fitfleet.petab``'s default).
        fatol: an absolute part of the ``ftol`` test, in cost units:
            ``F_old - F_new <= ftol·F_old + fatol`` (default 0, scipy's test).  For a
            cost that is a negative log-likelihood up to a constant, where a change of
            1e-6 means the same whatever the constant (``fitfleet.petab``: ``ftol=0``).
        max_steps: iteration budget; default ``100·(n+1)`` for lm/gn/trf, 10,000 for optax.
        max_nfev: scipy's spelling of the budget, residual evaluations counting the one
            at ``x0``: ``max_nfev = N`` means ``max_steps = N − 1`` (each step evaluates
            one trial point), so ``Result.n_fev <= N``.  Give one of the two.
        x_scale: scipy's characteristic scale of each parameter: positive numbers (a
            scalar or one per flat parameter; the trust region's extent along parameter
            j is proportional to ``x_scale[j]``: lm's ``D = 1/x_scale``, fixed, as scipy's
            ``lm``; gn's step does not depend on it, its ``xtol`` test is measured in these
            units), or ``"jac"`` (from the Jacobian's column norms).  Default (None) as
            scipy 1.17: 1 for trf, ``"jac"`` for lm and gn.
        sigma: measurement uncertainties: one standard deviation per residual, or an
            (m, m) covariance matrix.  The residual is whitened, ``r/σ`` or ``L⁻¹r`` with
            ``LLᵀ = sigma``, and ``Result.residual``/``cost``/``jac`` refer to it.
        bounds: ``(lower, upper)``, each a scalar, an array like the flat parameters or a
            pytree like ``x0`` (or a (2, n) array, or ``scipy.optimize.Bounds``);
            ``±inf`` for no bound.  Enforced by a smooth change of
            variables, so every iterate is feasible (see ``fitfleet._bounds``); with
            ``"trf"`` by the method itself (every iterate strictly inside).
        log_scale: bool, or per-parameter (array or pytree like ``x0``): fit ``log p``,
            which keeps ``p`` positive; for rate constants spanning decades.
        loss: robust loss, one of ``"linear"``, ``"soft_l1"``, ``"huber"``, ``"cauchy"``,
            ``"arctan"`` (scipy's definitions), with residual scale ``f_scale``.
        learning_rate: for ``"adam"``/``"sgd"`` (default 1e-3).
        initial_damping: Levenberg-Marquardt's first guess of the damping (relative to
            the unit diagonal of the scaled JᵀJ) where its trust-region search starts; it
            affects only how fast that search converges, not the steps taken.
        acceleration: ``"trf"``'s geodesic acceleration (Transtrum & Sethna 2012),
            with the linear loss: each step is corrected for the curvature of the
            residual along it, measured by one more residual evaluation (not counted in
            ``n_fev``, which counts trial points) and the Jacobian, so that fits crossing
            a curved valley take long steps instead of crawling.  ``None`` (default): on
            without bounds (``log_scale`` alone is fine), off with bounds (on
            ``benchmarks/bounds.py``'s fits it sent 6 of 480 to other local minima).
            ``True``: with bounds too, for the steps that stay inside the box.  A whole
            number k: as ``True`` from step k on, for the fits that have not converged
            by then (``fitfleet.petab`` uses a tenth of its step budget: crawling fits
            take long steps, quick fits are not touched).  ``False``, or a robust loss:
            scipy's ``trf`` step for step (with ``secant=False``).  Other methods
            ignore it.
        secant: ``"trf"``'s structured secant model (NL2SOL's, Dennis, Gay & Welsch
            1981), with the linear loss: the Gauss-Newton model ``JᵀJ`` gains a secant
            estimate of the residuals' own curvature ``Σ rᵢ∇²rᵢ``, used for a step where
            it predicted the last step better.  Far from a fit, where residuals are
            large, Gauss-Newton steps zig-zag across a valley; this is what lets them go
            along it.  ``None`` (default): on without bounds, off with bounds (on
            ``benchmarks/bounds.py``'s small fits it saved no steps and ended 2-3 of 480
            at other local minima; ``fitfleet.petab`` turns it on where σ is estimated:
            a 60-start Boehm multi-start ran 8.8x faster).  ``True``: on with bounds
            too.  ``False``: the Gauss-Newton model alone, as scipy's ``trf``.  Other
            methods ignore it.
        subspace: how ``"trf"`` solves its trust-region subproblem where the
            Gauss-Newton step leaves the region: ``"full"`` (default) exactly, as scipy
            does; ``"2d"`` in the plane of the Gauss-Newton step and the gradient
            (Coleman & Li's two-dimensional subspace, Fides's default), which turns
            towards the gradient sooner far from a fit.  On multi-starts it changes
            which local optimum a start reaches: ``fitfleet.petab`` uses ``"2d"``
            (``benchmarks/results/petab_1000_starts.md``).  Other methods ignore it.
        adjoint: how ``jax.grad``/``jvp``/``vmap``-ed derivatives of the Result with
            respect to ``args``, ``sigma``, ``f_scale`` (any floating array the fit
            depends on) are computed.  ``"implicit"`` (default) differentiates the
            optimality condition ∇F(p*) = 0 with the exact Hessian: one extra linear
            solve, forward and reverse mode, zero derivative with respect to ``x0``.
            ``"unroll"`` differentiates through the iterations (reverse mode only, with
            checkpointing so memory stays O(√max_steps) solver states).  Details in
            ``fitfleet._implicit``.
        grad_on_failure: derivatives of a fit that failed (``success`` False):
            ``"nan"`` (default, so a failure cannot go unnoticed), ``"zero"`` (failed
            fits contribute nothing) or ``"keep"`` (evaluate the formula at the returned
            point anyway).
        history: record the path: ``True`` for every step (``max_steps + 1`` rows), an
            int ``k`` for the start and the first ``k − 1`` steps; ``Result.history``.
        verbose: 0 silent, 1 print the Result at the end, 2 also a line per step (a
            host callback per step), as scipy's ``verbose``.
        progress: a progress bar of the steps taken, with the cost (needs ``tqdm``; a
            host callback per step).
        kwargs: keyword arguments to ``fun``, ``fun(params, *args, **kwargs)`` (scipy's
            ``kwargs``), traced like ``args``.

    Returns:
        A :class:`Result`.  A fit that fails does not raise: its ``status`` says why.

    Raises:
        TypeError, ValueError: for bad arguments, before anything is compiled.

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> S = jnp.linspace(0.1, 30.0, 20)
        >>> v = 29.0 * S / (6.0 + S)
        >>> def residual(p, S, v):
        ...     return p[0] * S / (p[1] + S) - v
        >>> res = ff.least_squares(residual, jnp.array([10.0, 10.0]), (S, v))
        >>> res.params.round(2).tolist(), bool(res.success), res.status.item() in (1, 2, 3)
        ([29.0, 6.0], True, True)

        A fit is differentiable with respect to its data.  The fitted decay rate does not
        change when all the data are scaled, so its gradient is orthogonal to the data:

        >>> import jax
        >>> t = jnp.linspace(0.0, 4.0, 9)
        >>> y = 2.0 * jnp.exp(-0.7 * t) + 0.01 * jnp.sin(5 * t)
        >>> def decay(p, t, y):
        ...     return p[0] * jnp.exp(-p[1] * t) - y
        >>> rate = lambda y: ff.least_squares(decay, jnp.array([1.0, 1.0]), (t, y)).params[1]
        >>> dk_dy = jax.grad(rate)(y)
        >>> abs(float(dk_dy @ y)) < 1e-4, float(jnp.abs(dk_dy).max()) > 0.01
        (True, True)
    """
    options = {name: value for name, value in locals().items() if name in DEFAULTS}
    fun, args = _problem.with_keywords(fun, args, kwargs)
    setup = prepare(fun, x0, args, options)
    try:
        steps = int(setup.solver.tol.max_steps) if not _validate.is_traced(setup.solver.tol.max_steps) else None
        with _xla.compile_notice("the fit"), _driver.progress_bar(setup.monitor, steps):
            res = _solve(fun, *setup)
    except Exception as e:
        if not _xla.raised_by_model(e):
            raise
        res = _driver.raised_result(eqx.filter_eval_shape(_solve, fun, *setup), setup.spec.x0)
    if verbose and not _validate.is_traced(res.status):
        print(res)
    return res


@_xla.filter_jit
def _solve(fun, spec, solver, adjoint, monitor):
    problem, u0 = _problem.make_problem(fun, spec)
    return _driver.to_result(problem, _driver.run(solver, problem, u0, adjoint, monitor), adjoint, spec)
