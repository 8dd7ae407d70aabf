"""The tie graph's gather and segment sum (`edges.py`) against the plain JAX ops they replace,
under every transformation the package puts them through."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffcomm.edges import sum_rows, take_rows

NUM_REGIONS = 7
SOURCE = jnp.array([3, 0, 6, 6, 2, 5, 1, 3, 4, 0, 6])
TARGET = jnp.array([0, 2, 1, 1, 5, 3, 6, 4, 4, 2, 0])


def plain_take(x, index):
    return x[index]


def plain_sum(y, index, num):
    return jax.ops.segment_sum(y, index, num_segments=num)


def through_ties(take, add):
    """A function of per-region values (R, K) through both reductions, nonlinear in between."""
    def f(x):
        log_x = jnp.log(x)
        sender, receiver = take(log_x, SOURCE), take(log_x, TARGET)
        flow = jnp.exp(sender - jax.nn.relu(sender - receiver))
        return jnp.sum(add(flow, TARGET, NUM_REGIONS) ** 2) + jnp.sum(jnp.sin(add(flow * receiver, SOURCE, NUM_REGIONS)))
    return f


@pytest.fixture
def points():
    key_x, key_v = jax.random.split(jax.random.key(3))
    x = 0.5 + jax.random.uniform(key_x, (4, NUM_REGIONS, 2))  # 4 chains, 2 domains
    return x, jax.random.normal(key_v, x.shape)


TRANSFORMS = {
    "value, vmapped": lambda f, x, v: jax.vmap(f)(x),
    "gradient, one": lambda f, x, v: jax.grad(f)(x[0]),
    "gradient, vmapped and jitted": lambda f, x, v: jax.jit(jax.vmap(jax.grad(f)))(x),
    "gradient of the vmapped sum": lambda f, x, v: jax.grad(lambda z: jnp.sum(jax.vmap(f)(z)))(x),
    "jvp, vmapped": lambda f, x, v: jax.vmap(lambda a, b: jax.jvp(f, (a,), (b,))[1])(x, v),
    "Hessian-vector product, vmapped": lambda f, x, v: jax.vmap(lambda a, b: jax.jvp(jax.grad(f), (a,), (b,))[1])(x, v),
    "gradient, vmapped over the domains": lambda f, x, v: jax.vmap(jax.grad(lambda z: f(z[..., None])), in_axes=2)(x),
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_the_primitives_give_what_the_plain_gather_and_segment_sum_give(x64, points, name):
    x, v = points
    plain = TRANSFORMS[name](through_ties(plain_take, plain_sum), x, v)
    ours = TRANSFORMS[name](through_ties(take_rows, sum_rows), x, v)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(plain), rtol=1e-12, atol=1e-12)


def test_batched_indices_fall_back_to_the_plain_ops():
    x = jnp.arange(2 * NUM_REGIONS, dtype=float).reshape(2, NUM_REGIONS)
    index = jnp.stack([SOURCE, TARGET])
    np.testing.assert_array_equal(jax.vmap(take_rows)(x, index), jax.vmap(plain_take)(x, index))
    y = jnp.stack([jnp.arange(11.0), -jnp.arange(11.0)])
    np.testing.assert_array_equal(jax.vmap(lambda a, i: sum_rows(a, i, NUM_REGIONS))(y, index),
                                  jax.vmap(lambda a, i: plain_sum(a, i, NUM_REGIONS))(y, index))


def test_under_vmap_the_batch_axis_moves_last():
    """What makes them cheaper: each index moves a contiguous row of the batch."""
    x = jnp.ones((4, NUM_REGIONS))
    jaxpr = jax.make_jaxpr(jax.vmap(lambda a: take_rows(a, SOURCE)))(x)
    (equation,) = [e for e in jaxpr.eqns if e.primitive.name == "take_rows"]
    assert equation.invars[0].aval.shape == (NUM_REGIONS, 4)
    assert equation.outvars[0].aval.shape == (SOURCE.shape[0], 4)
