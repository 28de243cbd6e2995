"""The one linear solve of every Newton-type step: a symmetric positive (semi)definite
system ``A x = b``.

Small systems (n <= ``UNROLL_MAX``) are factorised by a Cholesky decomposition written
out scalar by scalar.  Under ``vmap`` every scalar becomes a vector across the batch,
so the factorisation runs in SIMD lanes instead of calling LAPACK once per fit, which
is what makes thousands of small fits fast.  Larger systems use LAPACK's ``potrf``.

A matrix that is not positive definite yields non-finite entries; callers treat a
non-finite solution as a failed step rather than raising.  ``solve_semidefinite``
instead drops the directions in which the matrix is (numerically) singular.
"""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

UNROLL_MAX = 8


def cholesky(A, drop_below=None):
    """Lower Cholesky factor of a symmetric positive definite (n, n) matrix.

    Entries are NaN when ``A`` is not positive definite (``potrf`` and the unrolled
    version agree on that), which callers turn into a failed step.  With
    ``drop_below``, a pivot at or below it (a direction in which ``A`` is singular to
    that tolerance, or indefinite) is dropped instead: its column of the factor is 0.
    """
    n = A.shape[-1]
    if n > UNROLL_MAX:
        return jnp.linalg.cholesky(A) if drop_below is None else _cholesky_dropping(A, drop_below)
    a = _entries(A)
    L = [[jnp.zeros_like(a[0][0])] * n for _ in range(n)]
    # Multiplying by the pivots' reciprocals, not dividing by the pivots: a division is
    # an "expensive" operation XLA will not duplicate into its consumers, so n² divisions
    # would be n² separate kernels; n reciprocal square roots are n.
    for j in range(n):
        pivot = a[j][j] - sum(L[j][k] * L[j][k] for k in range(j))
        if drop_below is None:
            inverse_pivot = jax.lax.rsqrt(pivot)
            L[j][j] = 1 / inverse_pivot
        else:
            keep = pivot > drop_below
            inverse_pivot = jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, pivot, 1)), 0)
            L[j][j] = pivot * inverse_pivot  # √pivot, or 0
        for i in range(j + 1, n):
            L[i][j] = (a[i][j] - sum(L[i][k] * L[j][k] for k in range(j))) * inverse_pivot
    return jnp.stack([jnp.stack(row) for row in L])


def _cholesky_dropping(A, drop_below):
    """``cholesky(A, drop_below)`` for a large matrix, a column at a time."""
    n = A.shape[-1]
    rows = jnp.arange(n)

    def column(j, L):
        pivot = A[j, j] - L[j] @ L[j]
        keep = pivot > drop_below
        root = jnp.sqrt(jnp.where(keep, pivot, 1))
        below = jnp.where((rows > j) & keep, (A[:, j] - L @ L[j]) / root, 0)
        return L.at[:, j].set(jnp.where(rows == j, jnp.where(keep, root, 0), below))

    return jax.lax.fori_loop(0, n, column, jnp.zeros_like(A))


def solve_semidefinite(A, b):
    """``x`` with ``A x = b`` in the directions where the symmetric ``A`` is positive
    definite, 0 in the others: ``A`` is factorised by ``cholesky(A, drop_below)`` with
    numpy's pseudo-inverse cut-off ``10·n·eps`` relative to ``A``'s unit diagonal (scale
    ``A`` to unit diagonal first: its pivots are then the sines² of the angles between
    each column and the span of the earlier ones).

    A direction is dropped when its column depends on earlier ones to that precision
    (or ``A`` has negative curvature there); ``x`` then solves the system restricted to
    the kept directions, so ``bᵀx > 0`` unless ``b`` vanishes on all of them.
    """
    n = b.shape[-1]
    L = cholesky(A, drop_below=10 * n * jnp.finfo(A.dtype).eps)
    kept = jnp.diagonal(L) > 0
    L = L + jnp.diag(jnp.where(kept, 0, 1).astype(L.dtype))  # dropped columns are 0 below the diagonal
    return jnp.where(kept, solve_upper_transposed(L, jnp.where(kept, solve_lower(L, b), 0)), 0)


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
