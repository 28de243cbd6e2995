r"""Rodas5P: a Rosenbrock-Wanner method for stiff ODEs, as a diffrax solver.

A Rosenbrock method is linearly implicit: each step factorises one matrix and solves
with it once per stage, with no Newton iteration.  With ``J = ∂f/∂y(t₀, y₀)``,
``f_t = ∂f/∂t(t₀, y₀)`` and the step ``h``, the stages ``u_i`` of the transformed
formulation (Hairer & Wanner, *Solving ODEs II*, §IV.7, (7.4')) solve

    (I/(hγ) − J) u_i = f(t₀ + c_i h, y₀ + Σ_{j<i} a_ij u_j) + Σ_{j<i} (C_ij / h) u_j + h d_i f_t,

and Rodas5P's eight stages are arranged so that the solution is stiffly accurate: the
last three stages are taken at ``t₀ + h`` and each adds its ``u_i`` to the point it was
evaluated at,

    y₁ = y₀ + Σ_{j≤5} a_6j u_j + u₆ + u₇ + u₈,

with ``u₈`` the difference between the order-5 solution and its order-4 embedding,
the error estimate.  The dense output is Rodas5P's own (order 4):

    y(t₀ + θh) = (1 − θ) y₀ + θ (y₁ + (1 − θ)(q₁ + θ (q₂ + θ q₃))),   q = H u.

Why here.  The PEtab models are stiff and small (up to tens of states), and their
fits need forward sensitivities (``jax.jacfwd`` through the solve).  diffrax's ESDIRK
methods (Kvaerno5) solve six nonlinear stage equations a step by Newton iterations
inside nested loops, and in forward mode re-form and factorise the stage Jacobian for
every stage's tangent (optimistix's implicit function theorem).  A Rosenbrock step is
straight-line code around one factorisation: on Boehm_JProteomeRes2014 at the
nominal parameters and the same tolerances its solve and its Jacobian cost a fraction
of Kvaerno5's (``benchmarks/results/petab_solver.md``).  Its forward-mode derivative
is the derivative of the discrete step, the exact Jacobian's second derivatives
included, so a fit sees the gradient of what it minimises.

The method: G. Steinebach, "Construction of Rosenbrock-Wanner method Rodas5P and
numerical benchmarks within the Julia Differential Equations package", BIT Numer. Math.
63, 27 (2023); coefficients as published there (and in OrdinaryDiffEq.jl).  L-stable,
stiffly accurate, order 5 with an embedded order 4, designed to keep its order on
stiff problems and at the tolerances of parameter estimation (1e-6 to 1e-10).
"""

from typing import ClassVar

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

GAMMA = 0.21193756319429014
# A[i, j] for stages 2-6 (rows 1-5); C[i, j] for stages 2-8 (rows 1-7); per stage: c, d.
A = np.zeros((8, 8))
A[1, 0] = 3.0
A[2, :2] = 2.849394379747939, 0.45842242204463923
A[3, :3] = -6.954028509809101, 2.489845061869568, -10.358996098473584
A[4, :4] = 2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641
A[5, :5] = -7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256, 0.030198172008377946
C = np.zeros((8, 8))
C[1, 0] = -14.155112264123755
C[2, :2] = -17.97296035885952, -2.859693295451294
C[3, :3] = 147.12150275711716, -1.41221402718213, 71.68940251302358
C[4, :4] = 165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306
C[5, :5] = 24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125, -0.6610691825249471
C[6, :6] = 30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783, -19.097331116725623, -28.087943162872662
C[7, :7] = (
    37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047,
    -40.06618937091002, -54.66780262877968, -9.48861652309627,
)  # fmt: skip
STAGE_C = np.array([0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664, 1.0, 1.0, 1.0])
STAGE_D = np.array([GAMMA, -0.42387512638858027, -0.3384627126235924, 1.8046452872882734, 2.325825639765069, 0.0, 0.0, 0.0])
# The dense output's q = H u.
H = np.array([
    [25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204,
     0.524948541321073, 1.1241088310450404, 0.4272876194431874, -0.17202221070155493],
    [-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796,
     20.176138334709044, 15.98066361424651, -6.789040303419874, -6.710236069923372],
    [11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643,
     -52.072871366152654, -59.78993625266729, -0.15582684282751913, 4.883087185713722],
])  # fmt: skip


class RodasInterpolation(diffrax.AbstractLocalInterpolation):
    """Rodas5P's dense output on one step (module docstring)."""

    t0: jax.Array
    t1: jax.Array
    y0: jax.Array
    y1: jax.Array
    q: jax.Array  # (3, *y.shape)

    def evaluate(self, t0, t1=None, left=True):
        del left
        if t1 is not None:
            return self.evaluate(t1) - self.evaluate(t0)
        theta = (t0 - self.t0) / (self.t1 - self.t0)
        q1, q2, q3 = self.q
        return (1 - theta) * self.y0 + theta * (self.y1 + (1 - theta) * (q1 + theta * (q2 + theta * q3)))


class Rodas5P(diffrax.AbstractAdaptiveSolver):
    """Steinebach's Rodas5P (module docstring): an L-stable, stiffly accurate Rosenbrock
    method of order 5(4) with an order-4 dense output, for an ``ODETerm`` whose state
    is one array.  Use it as any diffrax solver, with an adaptive step size controller."""

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = RodasInterpolation

    def order(self, terms):
        del terms
        return 5

    def init(self, terms, t0, t1, y0, args):
        if not isinstance(y0, jax.Array | np.ndarray):
            raise TypeError(f"Rodas5P solves an ODE whose state is one array; got a {type(y0).__name__}.")
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        h = t1 - t0
        dtype = y0.dtype

        def f(t, y):
            return terms.vf(t, y, args)

        f0, f_t = jax.jvp(lambda t: f(t, y0), (t0,), (jnp.ones_like(t0),))
        jac = jax.jacfwd(lambda y: f(t0, y))(y0).reshape(y0.size, y0.size)
        w = jnp.eye(y0.size, dtype=dtype) / (h * GAMMA) - jac
        # One factorisation a step, kept as the inverse: the eight stage solves (and in
        # forward mode their tangents) are then matrix products, where with the LU
        # factors each costs a row permutation and two triangular solves, calls into
        # LAPACK that dominate a small model's step (the six PEtab test problems:
        # residuals 1.8-4×, Jacobians 1.6-2.8× faster, the same NLLs to 1e-10;
        # benchmarks/results/petab_summary.md).  A solve by the inverse is not backward
        # stable (Higham, *Accuracy and Stability*, §14.1: its error bound carries
        # |W⁻¹||b| where the LU's carries |x|); on Robertson's kinetics to t = 1e11, van
        # der Pol at μ = 1e6 (tests/test_rosenbrock.py) and HIRES it took the same steps
        # to the same accuracy as the LU in float64, and did no worse in float32.
        inverse = jnp.linalg.inv(jax.lax.stop_gradient(w))

        def solve(b):
            return jax.lax.custom_linear_solve(lambda x: w @ x, b, lambda _, b: inverse @ b, lambda _, b: inverse.T @ b)

        u = []
        y = y0
        for i in range(8):
            if i == 0:
                fi = f0
            else:
                if i <= 5:
                    y = y0 + sum(float(A[i, j]) * u[j] for j in range(i))
                else:
                    y = y + u[-1]
                fi = f(t0 + float(STAGE_C[i]) * h, y)
            # Python floats, weakly typed: a float32 state stays float32 with x64 on.
            rhs = fi + sum((float(C[i, j]) / h) * u[j] for j in range(i)) + (float(STAGE_D[i]) * h) * f_t
            u.append(solve(rhs.reshape(-1)).reshape(y0.shape))
        y1 = y + u[-1]
        q = jnp.stack([sum(float(H[k, j]) * u[j] for j in range(8)) for k in range(3)])
        dense_info = dict(y0=y0, y1=y1, q=q)
        return y1, u[-1], dense_info, None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
