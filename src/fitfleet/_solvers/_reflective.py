"""The box geometry of the trust-region reflective method (see
``trust_region_reflective``): Coleman-Li scaling, and scipy's choice among the cut,
reflected and Cauchy steps where the trust-region step leaves the box.

A box is ``(lower, upper)``, arrays like ``x`` with ``±inf`` for a missing bound; every
function here is written without branches on data, so that it runs under ``vmap``, and
guards its divisions so that an infinite bound or a zero direction gives no NaN.
"""

import jax.numpy as jnp


def coleman_li(x, g, box):
    """The Coleman-Li scaling vector ``v`` and its derivative ``dv`` (scipy's
    ``CL_scaling_vector``): the distance to the bound the negative gradient points at,
    where that bound is finite; 1 (and ``dv = 0``) otherwise."""
    ones = jnp.ones_like(x)
    if box is None:
        return ones, jnp.zeros_like(x)
    lower, upper = box
    to_upper = (g < 0) & jnp.isfinite(upper)
    to_lower = (g > 0) & jnp.isfinite(lower)
    v = jnp.where(to_upper, upper - x, jnp.where(to_lower, x - lower, ones))
    dv = jnp.where(to_upper, -ones, jnp.where(to_lower, ones, 0))
    return v, dv


def scaled_gradient_norm(x, g, box):
    """``‖v·g‖∞``, the first-order optimality measure of scipy's trf (``‖g‖∞`` unbounded)."""
    return jnp.max(jnp.abs(g * coleman_li(x, g, box)[0]))


def strictly_feasible(x, lower, upper):
    """A point on or beyond a bound moved to the next representable number inside
    (scipy's ``make_strictly_feasible`` with ``rstep=0``)."""
    x = jnp.where(x <= lower, jnp.nextafter(lower, upper), x)
    x = jnp.where(x >= upper, jnp.nextafter(upper, lower), x)
    return jnp.where((x < lower) | (x > upper), (lower + upper) / 2, x)


def step_to_bound(x, s, lower, upper):
    """The smallest ``t >= 0`` with ``x + t·s`` on a bound, and which entries reach it then."""
    moving = s != 0
    safe = jnp.where(moving, s, 1)
    steps = jnp.where(moving, jnp.maximum((lower - x) / safe, (upper - x) / safe), jnp.inf)
    t = jnp.min(steps)
    return t, moving & (steps == t)


def quadratic(A, g, s):
    """The model ``½ sᵀAs + gᵀs``."""
    return jnp.sum(0.5 * A * jnp.outer(s, s)) + jnp.sum(g * s)


def _minimize_1d(a, b, c, lo, hi):
    """Minimum of ``a t² + b t + c`` over ``[lo, hi]`` (finite): ``(t, value)``."""
    extremum = -0.5 * b / jnp.where(a != 0, a, 1)
    inside = (a != 0) & (lo < extremum) & (extremum < hi)
    ts = jnp.stack([lo, hi, jnp.where(inside, extremum, lo)])
    values = ts * (a * ts + b) + c
    i = jnp.argmin(values)
    return ts[i], values[i]


def _boundary_crossing(x, s, radius):
    """The positive ``t`` with ``‖x + t s‖ = radius``, ``‖x‖ <= radius`` (scipy's
    ``intersect_trust_region``, cancellation-free)."""
    a = s @ s
    b = x @ s
    c = jnp.minimum(x @ x - radius**2, 0)
    root = jnp.sqrt(jnp.maximum(b * b - a * c, 0))
    q = -(b + jnp.where(b >= 0, root, -root))
    t1 = q / jnp.where(a > 0, a, 1)
    t2 = c / jnp.where(q != 0, q, 1)
    return jnp.where(a > 0, jnp.maximum(t1, t2), 0)


def select_step(x, A_h, g_h, p, p_h, d, radius, lower, upper, theta):
    """The step of scipy's ``select_step``: the trust-region step if it stays in the box,
    else the best (by the model) of that step cut at the first bound and stepped back by
    ``θ``, the reflected step, and the constrained Cauchy step.  Returns the step, the
    step in hat variables, and the model's predicted reduction."""
    inside = jnp.all((x + p >= lower) & (x + p <= upper))
    full_value = quadratic(A_h, g_h, p_h)

    # The step cut at the first bound it hits, and its reflection there.
    p_stride, hits = step_to_bound(x, p, lower, upper)
    p_stride = jnp.minimum(p_stride, 1)
    r_h = jnp.where(hits, -p_h, p_h)
    r = d * r_h
    p_h_cut = p_stride * p_h
    to_tr = _boundary_crossing(p_h_cut, r_h, radius)
    to_bound, _ = step_to_bound(x + p_stride * p, r, lower, upper)
    r_stride = jnp.minimum(to_bound, to_tr)
    positive = r_stride > 0
    r_lo = jnp.where(positive, (1 - theta) * p_stride / jnp.where(positive, r_stride, 1), 0)
    r_hi = jnp.where(positive, jnp.where(r_stride == to_bound, theta * to_bound, to_tr), -1)
    reflectable = (r_lo <= r_hi) & jnp.isfinite(r_hi)
    Ar = A_h @ r_h
    a = 0.5 * r_h @ Ar
    b = g_h @ r_h + p_h_cut @ Ar
    c = quadratic(A_h, g_h, p_h_cut)
    t, r_value = _minimize_1d(a, b, c, r_lo, jnp.where(reflectable, r_hi, r_lo))
    r_value = jnp.where(reflectable, r_value, jnp.inf)
    r_h = p_h_cut + t * r_h

    # The cut step, stepped back into the interior.
    p_h_back = theta * p_h_cut
    p_value = quadratic(A_h, g_h, p_h_back)

    # The Cauchy step: the model's minimum along −g_h, inside the region and the box.
    g_h_norm = jnp.linalg.norm(g_h)
    to_tr = radius / jnp.where(g_h_norm > 0, g_h_norm, 1)
    to_bound, _ = step_to_bound(x, -d * g_h, lower, upper)
    ag_hi = jnp.where(to_bound < to_tr, theta * to_bound, to_tr)
    ag_hi = jnp.where(g_h_norm > 0, ag_hi, 0)
    a = 0.5 * g_h @ (A_h @ g_h)
    t_ag, ag_value = _minimize_1d(a, -(g_h @ g_h), jnp.zeros_like(a), jnp.zeros_like(a), ag_hi)
    ag_h = -t_ag * g_h

    take_p = (p_value < r_value) & (p_value < ag_value)
    take_r = ~take_p & (r_value < p_value) & (r_value < ag_value)
    step_h = jnp.where(take_p, p_h_back, jnp.where(take_r, r_h, ag_h))
    value = jnp.where(take_p, p_value, jnp.where(take_r, r_value, ag_value))
    step_h = jnp.where(inside, p_h, step_h)
    value = jnp.where(inside, full_value, value)
    return d * step_h, step_h, -value
