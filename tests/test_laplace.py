"""The structured Laplace approximation against the dense one, and draws from it."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from diffcomm.effects import Effects, Estimate
from diffcomm.laplace import estimate_mask, laplace, sample
from diffcomm.loss import Prior, fisher_weights, fitted_outputs, negative_log_prior
from diffcomm.params import Params

pytestmark = pytest.mark.usefixtures("x64")

FREE = ["educating_weight", "inflow_bias", "attraction_scale", "buzz_quality_scale", "national_drift", "national_shock_scale"]


@pytest.fixture(scope="module")
def problem():
    from conftest import synthetic_dataset

    with jax.enable_x64(True):
        truth = Params.from_natural(1, educating_weight=0.5)
        data = synthetic_dataset(jax.random.key(3), truth, num_regions=30, num_years=5)
        ks = jax.random.split(jax.random.key(4), 3)
        effects = Effects(0.5 * jax.random.normal(ks[0], (30,)), 0.5 * jax.random.normal(ks[1], (30,)),
                          0.5 * jax.random.normal(ks[2], (5,)))
        estimate = Estimate(Params.from_natural(1, educating_weight=0.4, attraction_scale=0.6, buzz_quality_scale=0.4), effects)
        prior = Prior(truth, tuple(FREE), 1.0, ("attraction", "buzz_quality"), True)
        mask = estimate_mask(estimate, FREE, ("attraction", "buzz_quality"), True)
        return data, estimate, prior, mask


def dense_precision(data, estimate, prior, mask):
    """J^T W J + the prior's Hessian over every free entry, with no structure assumed."""
    free, fixed = eqx.partition(estimate, mask)
    flat, unravel = ravel_pytree(free)

    def at(x):
        return eqx.combine(unravel(x), fixed)

    jac_patents, jac_share = jax.jacfwd(lambda x: fitted_outputs(at(x), data))(flat)
    w_patents, w_share = fisher_weights(estimate, data)
    information = (jnp.einsum("tri,trj,tr->ij", jac_patents, jac_patents, w_patents)
                   + jnp.einsum("ri,rj,r->ij", jac_share, jac_share, w_share))
    return np.asarray(information + jax.hessian(lambda x: negative_log_prior(at(x), prior))(flat)), free


@pytest.fixture(scope="module")
def approx(problem):
    data, estimate, prior, mask = problem
    with jax.enable_x64(True):
        return laplace(estimate, data, prior, mask)


def test_the_structured_approximation_matches_the_dense_one(problem, approx):
    data, estimate, prior, mask = problem
    assert approx.positive_definite
    precision, free = dense_precision(data, estimate, prior, mask)
    covariance = np.linalg.inv(precision)
    # the layout of ravel_pytree(free): parameters in declaration order, then attraction, buzz_quality, year
    num_params = len(FREE)
    region = np.arange(num_params, num_params + 60).reshape(2, 30).T  # (R, E)
    glob = np.r_[np.arange(num_params), np.arange(num_params + 60, num_params + 65)]
    dense = covariance[np.ix_(glob, glob)]
    sd = np.sqrt(np.diag(dense))
    # the colouring leaves out how one region's effect moves the others' outputs through the ties and
    # the international community (terms of order 1/R); the national factor's part is exact (without
    # it the drift's sd was 1.3% off with these 30 regions, 180% with the metros' 1,002)
    np.testing.assert_allclose(np.sqrt(np.diag(approx.covariance)), sd, rtol=0.003)
    assert np.all(np.abs(approx.covariance - dense) <= 0.003 * np.outer(sd, sd))  # correlations agree to 0.003
    dense_sd = np.sqrt(np.diag(covariance))[region]
    np.testing.assert_allclose(approx.region_sd(), dense_sd, rtol=0.003)
    assert approx.names[num_params:] == [f"national_innovation[{t}]" for t in range(1, 6)]


def test_one_step_ahead_leaves_the_national_part_out(problem):
    """With each year restarted from the counts the restart carries the national factor into a
    region's own outputs, which the national part does not model: it is left out."""
    data, estimate, prior, mask = problem
    one_step = laplace(estimate, dataclasses.replace(data, one_step_ahead=True), prior, mask)
    assert one_step.positive_definite and one_step.region_update is None and one_step.region_core is None


def test_draws_follow_the_approximation(problem, approx):
    data, estimate, prior, mask = problem
    draws = sample(estimate, mask, approx, key=jax.random.key(0), num=4000)
    drawn = np.asarray(draws.params.unconstrained["educating_weight"])
    index = approx.names.index("educating_weight")
    assert abs(drawn.mean() - approx.mean[index]) < 4 * np.sqrt(approx.covariance[index, index] / 4000)
    np.testing.assert_allclose(drawn.std(), np.sqrt(approx.covariance[index, index]), rtol=0.05)
    np.testing.assert_allclose(np.asarray(draws.effects.attraction).std(axis=0), approx.region_sd()[:, 0], rtol=0.06)
    # what was not fitted stays at the estimate in every draw
    np.testing.assert_array_equal(np.asarray(draws.params.unconstrained["buzz_scale"]),
                                  float(estimate.params.unconstrained["buzz_scale"]))


def test_the_scale_of_a_region_effect_that_is_not_fitted_is_left_out_of_the_fit():
    """With only buzz quality fitted, `attraction_scale` in `free` would be fitted to its prior
    alone: the mask leaves it (and the attraction effects) fixed, and keeps the rest."""
    estimate = Estimate.start(Params.from_natural(1), 4, 3)
    free = ["educating_weight", "attraction_scale", "buzz_quality_scale"]
    mask = estimate_mask(estimate, free, ("buzz_quality",))
    assert {name for name, on in mask.params.unconstrained.items() if on} == {"educating_weight", "buzz_quality_scale"}
    assert mask.effects.buzz_quality and not mask.effects.attraction and mask.effects.year
    both = estimate_mask(estimate, free, ("attraction", "buzz_quality"))
    assert {name for name, on in both.params.unconstrained.items() if on} == set(free)
