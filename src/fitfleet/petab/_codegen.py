"""sympy expressions as JAX functions, generated once per problem by ``sympy.lambdify``
(its JAX printer; common subexpressions shared)."""

import jax.numpy as jnp
import sympy as sp


class Generated:
    """``f(*arrays) -> (len(exprs), *shape)``: each argument is an array whose leading
    axis runs over one group of symbols (``groups``); the remaining axes broadcast, so
    one call evaluates the expressions for many rows at once."""

    def __init__(self, groups, exprs):
        self.n = len(exprs)
        self.fun = sp.lambdify([list(g) for g in groups], list(exprs), modules="jax", cse=True, docstring_limit=0)

    def __call__(self, *arrays):
        out = self.fun(*arrays)
        shape = jnp.broadcast_shapes(*(jnp.shape(a)[1:] for a in arrays))
        dtype = jnp.result_type(*arrays)
        return jnp.stack([jnp.broadcast_to(jnp.asarray(o, dtype), shape) for o in out]) if out else jnp.zeros((0, *shape), dtype)
