"""The tie graph's two reductions, from regions to edges and back, as primitives that batch well.

`take_rows(x, index)` is `x[index]` (each edge reads a row of a per-region array) and
`sum_rows(y, index, num)` is `jax.ops.segment_sum(y, index, num)` (each region adds the rows of its
edges). Each is linear in its array and is the other's transpose, which is how reverse mode uses
them: the gradient of a gather is a segment sum, and of a segment sum a gather.

Why primitives and not the two `jax.numpy` calls. Under `jax.vmap` with a shared graph, JAX batches
both with the batch axis first, so each index moves a strided column of values (for NUTS, one per
chain), which XLA's CPU gather and scatter move more slowly than a contiguous row. Here the batching rule moves
the batch axis last, so each index moves one contiguous row, and leaves it there for the elementwise
work per edge that follows (`benchmarks/bench_posterior_gradient.py` measures what it gives the
sampler's gradient). Forward mode is each array's own op, so Hessian-vector products, `jax.jvp` and
`jax.linearize` work as before. The values are those of the plain ops up to the order in which
XLA adds (in float64 the tests find no difference; the sampler's float32 gradient on the US metros
moved by up to 3e-6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

__all__ = ["sum_rows", "take_rows"]


def _take(x, index):
    return x[index]


def _sum(y, index, *, num):
    return jax.ops.segment_sum(y, index, num_segments=num)


_take_p = Primitive("take_rows")
_sum_p = Primitive("sum_rows")


def take_rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """`x[index]` for an integer `index` (E,): the rows of `x` (R, ...) at each edge, (E, ...)."""
    return _take_p.bind(jnp.asarray(x), jnp.asarray(index))


def sum_rows(y: jax.Array, index: jax.Array, num: int) -> jax.Array:
    """`jax.ops.segment_sum(y, index, num_segments=num)`: the rows of `y` (E, ...) added into
    row `index[e]` of an array of `num` rows."""
    return _sum_p.bind(jnp.asarray(y), jnp.asarray(index), num=int(num))


def _shaped(shape, dtype):
    return jax.core.ShapedArray(shape, dtype)


_take_p.def_impl(_take)
_sum_p.def_impl(_sum)
_take_p.def_abstract_eval(lambda x, index: _shaped(index.shape + x.shape[1:], x.dtype))
_sum_p.def_abstract_eval(lambda y, index, *, num: _shaped((num,) + y.shape[1:], y.dtype))
mlir.register_lowering(_take_p, mlir.lower_fun(_take, multiple_results=False))
mlir.register_lowering(_sum_p, mlir.lower_fun(_sum, multiple_results=False))


def _jvp(primitive):
    def rule(primals, tangents, **params):
        array, index = primals
        out = primitive.bind(array, index, **params)
        tangent = tangents[0]
        return out, ad.Zero.from_primal_value(out) if type(tangent) is ad.Zero else primitive.bind(tangent, index, **params)
    return rule


def _take_transpose(cotangent, x, index):
    if type(cotangent) is ad.Zero:
        return [ad.Zero(x.aval), None]
    return [_sum_p.bind(cotangent, index, num=x.aval.shape[0]), None]


def _sum_transpose(cotangent, y, index, *, num):
    if type(cotangent) is ad.Zero:
        return [ad.Zero(y.aval), None]
    return [_take_p.bind(cotangent, index), None]


def _batch_last(primitive, impl):
    """Batching with the batch axis moved last (each index moves a contiguous row); batched indices
    fall back to the plain ops' own batching."""
    def rule(args, dims, **params):
        (array, index), (array_dim, index_dim) = args, dims
        if index_dim is not None:
            return jax.vmap(lambda a, i: impl(a, i, **params), in_axes=(array_dim, index_dim))(array, index), 0
        array = jnp.moveaxis(array, array_dim, -1)
        return primitive.bind(array, index, **params), array.ndim - 1
    return rule


ad.primitive_jvps[_take_p] = _jvp(_take_p)
ad.primitive_jvps[_sum_p] = _jvp(_sum_p)
ad.primitive_transposes[_take_p] = _take_transpose
ad.primitive_transposes[_sum_p] = _sum_transpose
batching.primitive_batchers[_take_p] = _batch_last(_take_p, _take)
batching.primitive_batchers[_sum_p] = _batch_last(_sum_p, _sum)
