"""The calibration objective: masks, the held-out window, the prior, and its gradient."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffcomm.loss import Prior, gaussian_prior, negative_log_likelihood, negative_log_posterior, objective
from diffcomm.observation import negative_binomial_nll
from diffcomm.params import Params
from diffcomm.simulate import simulate_from_data

pytestmark = pytest.mark.usefixtures("x64")


def test_masked_cells_change_neither_value_nor_gradient(synthetic):
    truth = Params.from_natural(1)
    data = synthetic(jax.random.key(0), truth, num_regions=20, num_years=6)
    clean = dataclasses.replace(data, patents_mask=data.patents_mask.at[2, :5].set(0.0))
    garbage = dataclasses.replace(clean, patents=clean.patents.at[2, :5].set(1e6))
    for f in (negative_log_likelihood, jax.grad(negative_log_likelihood)):
        a, b = f(truth, clean), f(truth, garbage)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_allclose(x, y)
    # and the masked loss is the whole loss less exactly the masked cells' terms
    mean = simulate_from_data(truth, data, 6)[1].patents
    dispersion = truth.natural().patents_dispersion
    left_out = negative_binomial_nll(mean[2, :5], data.patents[2, :5], dispersion, jnp.ones(5))
    np.testing.assert_allclose(negative_log_likelihood(truth, clean), negative_log_likelihood(truth, data) - left_out,
                               rtol=1e-12)


def test_holding_out_later_years_is_fitting_the_earlier_ones(synthetic):
    """`Dataset.through` masks the later years: the loss equals that of the shorter data set."""
    truth = Params.from_natural(1)
    data = synthetic(jax.random.key(3), truth, num_regions=15, num_years=8, with_linkages=True)
    held_out = data.through(2005)
    shorter = dataclasses.replace(data, patents=data.patents[:5], patents_mask=data.patents_mask[:5], window=data.window[:5],
                                  years=data.years[:6])
    np.testing.assert_allclose(negative_log_likelihood(truth, held_out), negative_log_likelihood(truth, shorter), rtol=1e-12)
    assert float(held_out.num_observations) == float(shorter.num_observations)
    assert held_out.patents.shape == data.patents.shape  # the same shapes: the same compiled programs


def test_prior_and_normalisation(synthetic):
    start = Params.from_natural(1)
    data = synthetic(jax.random.key(1), start, num_regions=10, num_years=4)
    moved = eqx.tree_at(lambda p: p.unconstrained["educating_weight"], start, start.unconstrained["educating_weight"] + 2.0)
    prior = Prior(start, ("educating_weight", "buzz_scale"), 0.5)
    np.testing.assert_allclose(gaussian_prior(moved, prior), 0.5 * (2.0 / 0.5) ** 2)
    assert float(gaussian_prior(moved, Prior(start, ("buzz_scale",), 0.5))) == 0.0  # only free parameters count
    assert float(gaussian_prior(moved, Prior(start, ("educating_weight",), None))) == 0.0  # no prior
    total = negative_log_posterior(moved, data, prior)
    np.testing.assert_allclose(total, negative_log_likelihood(moved, data) + 8.0, rtol=1e-12)
    np.testing.assert_allclose(objective(moved, data, prior), total / (4 * 10), rtol=1e-12)


def test_likelihood_gradient_matches_finite_differences(synthetic):
    truth = Params.from_natural(1)
    data = synthetic(jax.random.key(2), truth, num_regions=25, num_years=6, with_linkages=True)
    loss = jax.jit(negative_log_likelihood)
    grads = jax.grad(loss)(truth, data)
    h = 1e-6
    names = ["connecting_weight", "educating_weight", "inflow_bias", "buzz_scale", "patents_intercept", "patents_dispersion",
             "nonlocal_intercept", "nonlocal_concentration", "ubiquitification", "critical_mass"]
    for name in names:
        value = truth.unconstrained[name]
        bump = jnp.full_like(value, h)
        up = eqx.tree_at(lambda p: p.unconstrained[name], truth, value + bump)
        down = eqx.tree_at(lambda p: p.unconstrained[name], truth, value - bump)
        fd = (loss(up, data) - loss(down, data)) / (2 * h)
        np.testing.assert_allclose(jnp.sum(grads.unconstrained[name]), fd, rtol=1e-5, atol=1e-6, err_msg=name)
