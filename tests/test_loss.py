"""Likelihood terms against direct formulas, masks, and gradients of the calibration loss."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from calibration_helpers import synthetic_inputs

from diffcomm.loss import beta_binomial_nll, binomial_nll, calibration_loss, lognormal_nll, negative_binomial_nll
from diffcomm.model import Params


def test_negative_binomial_matches_its_formula_and_the_poisson_limit():
    mean, count, r = 7.5, 4.0, 3.0
    p = r / (r + mean)
    direct = -(math.lgamma(count + r) - math.lgamma(r) - math.lgamma(count + 1) + r * math.log(p) + count * math.log(1 - p))
    np.testing.assert_allclose(negative_binomial_nll(jnp.asarray(mean), jnp.asarray(count), jnp.asarray(r), 1.0), direct)
    poisson = -(count * math.log(mean) - mean - math.lgamma(count + 1))
    np.testing.assert_allclose(negative_binomial_nll(jnp.asarray(mean), jnp.asarray(count), jnp.asarray(1e8), 1.0), poisson, rtol=1e-6)


def test_binomial_and_beta_binomial():
    k, n, q = 3.0, 10.0, 0.4
    direct = -(math.log(math.comb(10, 3)) + k * math.log(q) + (n - k) * math.log(1 - q))
    np.testing.assert_allclose(binomial_nll(jnp.asarray(q), jnp.asarray(k), jnp.asarray(n), 1.0), direct)
    near = beta_binomial_nll(jnp.asarray(q), jnp.asarray(k), jnp.asarray(n), jnp.asarray(1e9), 1.0)
    np.testing.assert_allclose(near, direct, rtol=1e-5)
    # overdispersion: a far-off share costs less under the beta-binomial
    far = (jnp.asarray(0.9), jnp.asarray(k), jnp.asarray(n))
    assert beta_binomial_nll(*far, jnp.asarray(5.0), 1.0) < binomial_nll(*far, 1.0)


def test_lognormal():
    y, m, s = 2.0, 1.5, 0.3
    direct = -(-0.5 * ((math.log(y) - math.log(m)) / s) ** 2 - math.log(s) - math.log(y) - 0.5 * math.log(2 * math.pi))
    np.testing.assert_allclose(lognormal_nll(jnp.asarray(m), jnp.asarray(y), jnp.asarray(s), 1.0), direct)


def test_masked_cells_change_neither_value_nor_gradient():
    truth = Params.from_natural(1)
    inputs = synthetic_inputs(jax.random.key(0), truth, num_regions=20, num_years=6)
    mask = inputs.patents_mask.at[2, :5].set(0.0)
    clean = dataclasses.replace(inputs, patents_mask=mask)
    garbage = dataclasses.replace(clean, patents=clean.patents.at[2, :5].set(1e6))
    for f in (calibration_loss, jax.grad(calibration_loss)):
        a, b = f(truth, clean), f(truth, garbage)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_allclose(x, y)
    assert calibration_loss(truth, clean) < calibration_loss(truth, inputs)  # fewer terms


def test_likelihood_gradient_matches_finite_differences():
    truth = Params.from_natural(1)
    inputs = synthetic_inputs(jax.random.key(2), truth, num_regions=25, num_years=6, with_linkages=True)
    loss = jax.jit(lambda p: calibration_loss(p, inputs))
    grads = jax.grad(loss)(truth)
    h = 1e-6
    names = ["connecting_weight", "educating_weight", "inflow_bias", "buzz_scale", "patents_intercept", "patents_dispersion",
             "nonlocal_intercept", "nonlocal_concentration", "ubiquitification", "critical_mass"]
    for name in names:
        value = getattr(truth, name)
        bump = jnp.full_like(value, h)
        fd = (loss(dataclasses.replace(truth, **{name: value + bump})) - loss(dataclasses.replace(truth, **{name: value - bump}))) / (2 * h)
        np.testing.assert_allclose(jnp.sum(getattr(grads, name)), fd, rtol=1e-5, atol=1e-6, err_msg=name)
