"""The one linear solve of every Newton-type step: a symmetric positive (semi)definite
system ``A x = b``.

Small systems (n <= ``UNROLL_MAX``) are factorised by a Cholesky decomposition written
out scalar by scalar.  Under ``vmap`` every scalar becomes a vector across the batch,
so the factorisation runs in SIMD lanes instead of calling LAPACK once per fit, which
is what makes thousands of small fits fast.  Larger systems use LAPACK's ``potrf``.

A matrix that is not positive definite yields non-finite entries; callers treat a
non-finite solution as a failed step rather than raising.
"""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

UNROLL_MAX = 8


def cholesky(A):
    """Lower Cholesky factor of a symmetric positive definite (n, n) matrix.

    Entries are NaN when ``A`` is not positive definite (``potrf`` and the unrolled
    version agree on that), which callers turn into a failed step.
    """
    n = A.shape[-1]
    if n > UNROLL_MAX:
        return jnp.linalg.cholesky(A)
    a = _entries(A)
    L = [[jnp.zeros_like(a[0][0])] * n for _ in range(n)]
    # Multiplying by the pivots' reciprocals, not dividing by the pivots: a division is
    # an "expensive" operation XLA will not duplicate into its consumers, so n² divisions
    # would be n² separate kernels; n reciprocal square roots are n.
    for j in range(n):
        inverse_pivot = jax.lax.rsqrt(a[j][j] - sum(L[j][k] * L[j][k] for k in range(j)))
        L[j][j] = 1 / inverse_pivot
        for i in range(j + 1, n):
            L[i][j] = (a[i][j] - sum(L[i][k] * L[j][k] for k in range(j))) * inverse_pivot
    return jnp.stack([jnp.stack(row) for row in L])


def solve_lower(L, b):
    """``L⁻¹ b`` for lower-triangular ``L``."""
    n = b.shape[-1]
    if n > UNROLL_MAX:
        return jsl.solve_triangular(L, b, lower=True)
    inverse_diagonal = jnp.unstack(1 / jnp.diagonal(L))  # one kernel, not n (see cholesky)
    L, b = _entries(L), jnp.unstack(b)
    z = []
    for i in range(n):
        z.append((b[i] - sum(L[i][k] * z[k] for k in range(i))) * inverse_diagonal[i])
    return jnp.stack(z)


def solve_upper_transposed(L, b):
    """``L⁻ᵀ b`` for lower-triangular ``L``."""
    n = b.shape[-1]
    if n > UNROLL_MAX:
        return jsl.solve_triangular(L, b, lower=True, trans="T")
    inverse_diagonal = jnp.unstack(1 / jnp.diagonal(L))
    L, b = _entries(L), jnp.unstack(b)
    x = [None] * n
    for i in reversed(range(n)):
        x[i] = (b[i] - sum(L[k][i] * x[k] for k in range(i + 1, n))) * inverse_diagonal[i]
    return jnp.stack(x)


def _entries(A):
    """The entries of an (n, n) matrix as a list of rows of scalars (cheap to trace:
    one unstack, not n² indexing operations)."""
    n = A.shape[-1]
    flat = jnp.unstack(A.reshape(n * n))
    return [flat[i * n : (i + 1) * n] for i in range(n)]


def solve_spd(A, b):
    """Solve ``A x = b`` for symmetric positive definite ``A`` of shape (n, n)."""
    L = cholesky(A)
    return solve_upper_transposed(L, solve_lower(L, b))


def solve_scaled(jtj, rhs, scale, damping):
    """Solve ``(JᵀJ + damping·D²) x = rhs`` with ``D = diag(scale)``, in scaled variables.

    Dividing rows and columns by ``D`` gives the matrix unit-sized diagonal entries
    (Jacobi preconditioning), so Cholesky sees a far better conditioned matrix than
    ``JᵀJ`` itself when parameters have very different magnitudes.
    """
    A = jtj / (scale[:, None] * scale[None, :])
    A = A + damping * jnp.eye(A.shape[0], dtype=A.dtype)
    return solve_spd(A, rhs / scale) / scale
