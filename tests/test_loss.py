"""The calibration objective: masks, the held-out window, the prior, and its gradient."""

import dataclasses
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffcomm.effects import Effects, Estimate
from diffcomm.loss import (
    Prior,
    curvature_information,
    expected_patents,
    frozen_objective,
    gaussian_prior,
    in_precision,
    latent_curvature,
    log_joint,
    negative_log_likelihood,
    negative_log_posterior,
    negative_log_prior,
    objective,
)
from diffcomm.observation import negative_binomial_nll
from diffcomm.params import Params


def at(params, data, effects=None):
    """An estimate of `params` with `effects` (default: none, every region and year at the mean)."""
    return Estimate(params, effects or Effects.zeros(data.num_regions, data.patents.shape[0]))

pytestmark = pytest.mark.usefixtures("x64")


def test_masked_cells_change_neither_value_nor_gradient(synthetic):
    truth = Params.from_natural(1)
    data = synthetic(jax.random.key(0), truth, num_regions=20, num_years=6)
    clean = dataclasses.replace(data, patents_mask=data.patents_mask.at[2, :5].set(0.0))
    garbage = dataclasses.replace(clean, patents=clean.patents.at[2, :5].set(1e6))
    estimate = at(truth, data)
    for f in (negative_log_likelihood, jax.grad(negative_log_likelihood)):
        a, b = f(estimate, clean), f(estimate, garbage)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_allclose(x, y)
    # and the masked loss is the whole loss less exactly the masked cells' terms
    mean = expected_patents(estimate, data)[0]
    dispersion = truth.natural().patents_dispersion
    left_out = negative_binomial_nll(mean[2, :5], data.patents[2, :5], dispersion, jnp.ones(5))
    np.testing.assert_allclose(negative_log_likelihood(estimate, clean), negative_log_likelihood(estimate, data) - left_out,
                               rtol=1e-12)


def test_one_step_ahead_each_year_starts_from_the_counts_of_the_year_before(synthetic):
    truth = Params.from_natural(1)
    data = synthetic(jax.random.key(4), truth, num_regions=20, num_years=6)
    year = 0.3 * jax.random.normal(jax.random.key(1), (6,))
    estimate = at(truth, data, dataclasses.replace(Effects.zeros(20, 6), year=year))
    free = expected_patents(estimate, data)[0]
    ahead = dataclasses.replace(data, one_step_ahead=True)
    expected = eqx.filter_jit(expected_patents)  # one program for the four data sets below
    # restarted from no count, the path is the free one: a restart's jump is not counted as the model's growth
    np.testing.assert_allclose(expected(estimate, dataclasses.replace(ahead, patents_mask=0 * data.patents_mask))[0], free,
                               rtol=1e-12)
    base = expected(estimate, ahead)[0]
    assert np.mean(np.abs(np.log(base[1:]) - np.log(data.patents[:-1] + 0.5))) < 0.5 * np.mean(
        np.abs(np.log(free[1:]) - np.log(data.patents[:-1] + 0.5)))  # near the counts a year before
    moved = expected(estimate, dataclasses.replace(ahead, patents=ahead.patents.at[2, 5].multiply(3.0)))[0]
    change = np.abs(np.log(moved) - np.log(base))
    assert change[:3].max() == 0.0  # the years up to the count do not read it
    assert change[3, 5] > 0.5 and np.delete(change[3], 5).max() < 0.01  # the next year does, in its region
    # a masked cell is not restarted from (its count is read as NaN there): its count reaches
    # neither value nor gradient, and the gradient stays finite
    clean = dataclasses.replace(ahead, patents_mask=ahead.patents_mask.at[2, :5].set(0.0))
    garbage = dataclasses.replace(clean, patents=clean.patents.at[2, :5].set(1e6))
    value_and_grad = eqx.filter_jit(jax.value_and_grad(negative_log_likelihood))
    a, b = value_and_grad(estimate, clean), value_and_grad(estimate, garbage)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.all(np.isfinite(x))
        np.testing.assert_allclose(x, y)


def test_holding_out_later_years_is_fitting_the_earlier_ones(synthetic):
    """`Dataset.through` masks the later years: the loss equals that of the shorter data set."""
    truth = Params.from_natural(1)
    data = synthetic(jax.random.key(3), truth, num_regions=15, num_years=8, with_linkages=True)
    held_out = data.through(2005)
    shorter = dataclasses.replace(data, patents=data.patents[:5], patents_mask=data.patents_mask[:5], window=data.window[:5],
                                  years=data.years[:6])
    np.testing.assert_allclose(negative_log_likelihood(at(truth, data), held_out),
                               negative_log_likelihood(at(truth, shorter), shorter), rtol=1e-12)
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
    total = negative_log_posterior(at(moved, data), data, prior)
    np.testing.assert_allclose(total, negative_log_likelihood(at(moved, data), data) + 8.0, rtol=1e-12)
    np.testing.assert_allclose(objective(at(moved, data), data, prior), total / (4 * 10), rtol=1e-12)
    # standardized latent effects are N(0, 1) a priori
    effects = Effects(jnp.full(10, 2.0), jnp.zeros(10), jnp.full(3, 1.0))
    np.testing.assert_allclose(negative_log_prior(at(moved, data, effects), prior), 8.0 + 0.5 * (10 * 4.0 + 3 * 1.0))


def test_the_latent_curvature_grows_with_the_scales_and_vanishes_without_them(synthetic):
    data = synthetic(jax.random.key(5), Params.from_natural(1), num_regions=12, num_years=5)
    effects = Effects(jnp.linspace(-1, 1, 12), jnp.zeros(12), jnp.zeros(5))

    def curvature(scale):
        estimate = at(Params.from_natural(1, attraction_scale=scale), data, effects)
        patents = expected_patents(estimate, data)[0]
        return float(latent_curvature(estimate, data, Prior(estimate.params, (), None, ("attraction",)), patents))

    values = [curvature(s) for s in (1e-6, 0.3, 1.0)]
    assert values[0] < 1e-8 < values[1] < values[2]


def test_likelihood_gradient_matches_finite_differences(synthetic):
    truth = Params.from_natural(1)
    data = synthetic(jax.random.key(2), truth, num_regions=25, num_years=6, with_linkages=True)
    loss = jax.jit(lambda params, data: negative_log_likelihood(at(params, data), data))
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


def test_the_frozen_objective_is_the_objective_at_its_reference_and_its_own_gradient_elsewhere(synthetic):
    """`frozen_objective` (the polish's) equals `objective` and has its gradient where the
    information is held; elsewhere its gradient is that of its value (finite differences),
    which `objective`'s gradient, the information held for the gradient only, is not."""
    data = synthetic(jax.random.key(7), Params.from_natural(1), num_regions=12, num_years=5)
    params = Params.from_natural(1, attraction_scale=0.8, national_shock_scale=0.2)
    estimate = at(params, data, Effects(jnp.linspace(-1, 1, 12), jnp.zeros(12), jnp.linspace(-0.5, 0.5, 5)))
    prior = Prior(params, ("educating_weight", "critical_mass", "patents_dispersion"), 1.0, ("attraction",), True)
    held = curvature_information(estimate, data, prior, expected_patents(estimate, data)[0])
    # each compiled once: the finite differences below evaluate them many times at the same shapes
    frozen_value, frozen_grad = eqx.filter_jit(frozen_objective), eqx.filter_jit(jax.grad(frozen_objective))
    value, value_grad = eqx.filter_jit(objective), eqx.filter_jit(jax.grad(objective))
    np.testing.assert_allclose(frozen_value(estimate, data, prior, held), value(estimate, data, prior), rtol=1e-12)
    names = ("educating_weight", "critical_mass", "patents_dispersion")

    def components(g):
        return np.array([float(jnp.sum(g.params.unconstrained[n])) for n in names])

    np.testing.assert_allclose(components(frozen_grad(estimate, data, prior, held)),
                               components(value_grad(estimate, data, prior)), rtol=1e-10)
    away = eqx.tree_at(lambda e: e.params.unconstrained["patents_dispersion"], estimate,
                       estimate.params.unconstrained["patents_dispersion"] - 0.7)
    frozen = components(frozen_grad(away, data, prior, held))
    h = 1e-5
    for i, name in enumerate(names):
        def moved(step):
            return eqx.tree_at(lambda e: e.params.unconstrained[name], away, away.params.unconstrained[name] + step)
        fd = (frozen_value(moved(h), data, prior, held) - frozen_value(moved(-h), data, prior, held)) / (2 * h)
        np.testing.assert_allclose(frozen[i], fd, rtol=1e-5, err_msg=name)
        if name == "patents_dispersion":  # the count weights move with it: the objective's own value has another slope
            fd_objective = (value(moved(h), data, prior) - value(moved(-h), data, prior)) / (2 * h)
            held_gradient = components(value_grad(away, data, prior))[i]
            assert abs(held_gradient - float(fd_objective)) > 0.1 * abs(float(fd_objective))


def test_the_simulation_runs_in_the_parameters_precision_and_the_likelihood_in_the_estimates(synthetic):
    """`precision=float32` simulates in single precision (no double-precision array in the
    simulation's program; scalar constants are converted) and returns the log joint in double, within single precision's error
    of the all-double one; its gradient too."""
    truth = Params.from_natural(1)
    data = synthetic(jax.random.key(2), truth, num_regions=30, num_years=6)
    estimate = at(truth, data, dataclasses.replace(Effects.zeros(30, 6), year=0.1 * jnp.arange(6.0)))
    prior = Prior(truth, free=("educating_weight", "migrating_weight"), scale=1.0)
    single = jax.make_jaxpr(expected_patents)(in_precision(estimate, jnp.float32), in_precision(data, jnp.float32))
    assert not re.search(r"f64\[\d", str(single))
    full = jax.value_and_grad(log_joint)(estimate, data, prior)
    mixed = jax.value_and_grad(log_joint)(estimate, data, prior, jnp.float32)
    assert mixed[0].dtype == jnp.float64 and 0 < abs(mixed[0] - full[0]) < 1e-4 * abs(full[0])
    gradient = [np.asarray(g.params.unconstrained[name]) for g in (full[1], mixed[1]) for name in prior.free]
    np.testing.assert_allclose(gradient[2:], gradient[:2], rtol=1e-4)
