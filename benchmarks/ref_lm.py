"""A 45-line reference Levenberg-Marquardt (unrolled Cholesky, no status codes, no trust
region): what the hardware allows for this kind of step.

Provenance: copied unchanged (but for this docstring) from the project's GPU check,
``../shared/gpu/ref_lm_fast.py`` (issue 19), so that ``benchmarks/accelerator.py`` does not
depend on ``../shared``.
"""
import jax, jax.numpy as jnp

def chol_solve(A, b):
    """Solve A x = b for small SPD A by an unrolled Cholesky (traced as scalar ops, vectorises under vmap)."""
    m = A.shape[0]
    L = [[None] * m for _ in range(m)]
    for j in range(m):
        s = A[j, j] - sum(L[j][k] * L[j][k] for k in range(j))
        L[j][j] = jnp.sqrt(jnp.maximum(s, jnp.finfo(A.dtype).tiny))
        for i in range(j + 1, m):
            L[i][j] = (A[i, j] - sum(L[i][k] * L[j][k] for k in range(j))) / L[j][j]
    y = [None] * m
    for i in range(m):
        y[i] = (b[i] - sum(L[i][k] * y[k] for k in range(i))) / L[i][i]
    x = [None] * m
    for i in reversed(range(m)):
        x[i] = (y[i] - sum(L[k][i] * x[k] for k in range(i + 1, m))) / L[i][i]
    return jnp.stack(x)

def ref_lm(res, p0, maxit=200, tol=1e-10):
    def evaluate(p):
        return res(p), jax.jacfwd(res)(p)
    r, J = evaluate(p0)
    dt = p0.dtype
    def cond(s):
        return (s[5] < maxit) & (~s[6])
    def body(s):
        p, r, J, mu, nu, it, done = s
        g = J.T @ r; A = J.T @ J
        D = jnp.maximum(jnp.diag(A), jnp.finfo(dt).tiny)
        step = -chol_solve(A + mu * jnp.diag(D), g)
        pn = p + step
        rn, Jn = evaluate(pn)
        c, cn = 0.5 * r @ r, 0.5 * rn @ rn
        pred = -(g @ step) - 0.5 * step @ (A @ step)
        rho = (c - cn) / jnp.maximum(pred, jnp.finfo(dt).tiny)
        ok = (rho > 0) & jnp.isfinite(cn)
        mu_new = jnp.where(ok, mu * jnp.maximum(1 / 3, 1 - (2 * rho - 1) ** 3), mu * nu)
        nu_new = jnp.where(ok, 2.0, 2 * nu)
        p2 = jnp.where(ok, pn, p); r2 = jnp.where(ok, rn, r); J2 = jnp.where(ok, Jn, J)
        small = (jnp.linalg.norm(step) < tol * (jnp.linalg.norm(p) + tol)) | (jnp.abs(c - cn) < tol * jnp.maximum(c, tol))
        return p2, r2, J2, mu_new.astype(dt), nu_new.astype(dt), it + 1, small | (jnp.max(jnp.abs(g)) < tol)
    out = jax.lax.while_loop(cond, body, (p0, r, J, jnp.asarray(1e-3, dt), jnp.asarray(2.0, dt), 0, False))
    return out[0], out[5]
