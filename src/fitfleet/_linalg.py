"""The one linear solve of every Newton-type step: a symmetric positive (semi)definite
system ``A x = b``; and trf's SVD (``svd_jacobi``).

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


JACOBI_MAX = 32  # trf's SVD is written out (``svd_jacobi``) up to this many columns
JACOBI_SWEEPS = 30  # a bound, never reached in practice: the sweeps stop once nothing rotates
JACOBI_FIXED_SWEEPS = 12  # for a step without data-dependent loops; 3-8 sufficed in float64 up to n = 30


def svd_jacobi(A, sweeps=None):
    """The thin SVD of an (m, n) matrix with m >= n, by one-sided Jacobi rotations
    (Hestenes 1958; Demmel & Veselić 1992): ``(s, V, W)`` with ``A V = W``, ``V``
    orthogonal, ``W``'s columns orthogonal with norms ``s`` (so ``W = U diag(s)``;
    unsorted).

    Why not LAPACK: jaxlib's batched ``gesdd`` may split a batch over XLA's thread pool
    and wait for it there, so a batch's parts could not run concurrently (``_xla``); and
    under ``vmap`` these rotations are vector operations across the batch.  The
    accuracy is at least LAPACK's: one-sided Jacobi finds each singular value to a
    relative accuracy set by the conditioning of ``A`` with its columns scaled to unit
    norm, not of ``A`` itself.

    The columns are paired in the round-robin order (n − 1 rounds of n/2 disjoint pairs
    per sweep, an odd n padded with a zero column), so each round rotates every pair at
    once.  A pair (a, b) is rotated to make its columns orthogonal,

        ζ = (‖b‖² − ‖a‖²) / (2 aᵀb),   t = sign(ζ) / (|ζ| + √(1 + ζ²)),
        c = 1/√(1 + t²),   (a, b) ← (c a − c t b, c t a + c b),

    unless ``|aᵀb| <= eps·‖a‖‖b‖`` already; sweeps stop when a whole sweep rotates
    nothing (quadratic convergence: a handful of sweeps), or after ``JACOBI_SWEEPS``;
    ``sweeps``: a fixed number of sweeps instead (no data-dependent loop).
    """
    m, n = A.shape
    size = n + n % 2
    W = jnp.concatenate([A, jnp.zeros((m, size - n), A.dtype)], axis=1)
    V = jnp.eye(size, dtype=A.dtype)
    eps = jnp.finfo(A.dtype).eps
    rounds = _round_robin(size)

    def rotate(W, V, pairs):
        first, second = pairs[: size // 2], pairs[size // 2 :]
        a, b = W[:, first], W[:, second]
        alpha, beta, gamma = jnp.sum(a * a, 0), jnp.sum(b * b, 0), jnp.sum(a * b, 0)
        turn = jnp.abs(gamma) > eps * jnp.sqrt(alpha) * jnp.sqrt(beta)
        zeta = (beta - alpha) / (2 * jnp.where(turn, gamma, 1))
        t = jnp.sign(zeta) / (jnp.abs(zeta) + jnp.hypot(1, zeta))
        t = jnp.where(zeta == 0, 1, t) * turn  # equal norms: a 45° rotation
        c = jax.lax.rsqrt(1 + t * t)
        order = jnp.argsort(pairs)
        turned = lambda X: jnp.concatenate([c * X[:, first] - c * t * X[:, second], c * t * X[:, first] + c * X[:, second]], axis=1)[:, order]  # noqa: E731
        return turned(W), turned(V), jnp.any(turn)

    def sweep(carry):
        W, V, _, count = carry
        busy = False
        for pairs in rounds:
            W, V, turned = rotate(W, V, pairs)
            busy = busy | turned
        return W, V, busy, count + 1

    start = (W, V, jnp.array(True), 0)
    if sweeps is None:
        W, V, _, _ = jax.lax.while_loop(lambda c: c[2] & (c[3] < JACOBI_SWEEPS), sweep, start)
    else:
        W, V, _, _ = jax.lax.fori_loop(0, sweeps, lambda _, c: sweep(c), start)
    return jnp.linalg.norm(W[:, :n], axis=0), V[:n, :n], W[:, :n]


def _round_robin(size):
    """The round-robin tournament on ``size`` (even) columns: ``size − 1`` rounds, each a
    permutation whose first and second halves are the rounds' pairs."""
    players = list(range(size))
    rounds = []
    for _ in range(size - 1):
        half = size // 2
        rounds.append(jnp.array(players[:half] + players[half:][::-1]))
        players = [players[0], players[-1], *players[1:-1]]
    return rounds
