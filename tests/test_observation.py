"""The observation model: likelihoods against their formulas, the link and its inverse, the sampler."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffcomm.inputs import Graph
from diffcomm.model import init_state
from diffcomm.observation import (
    beta_binomial_nll,
    count_quantiles,
    knowledge_from_patents,
    negative_binomial_deviance,
    negative_binomial_nll,
    observe,
    sample_counts,
)
from diffcomm.params import Params

pytestmark = pytest.mark.usefixtures("x64")


def test_negative_binomial_matches_its_formula_and_the_poisson_limit():
    mean, count, r = 7.5, 4.0, 3.0
    p = r / (r + mean)
    direct = -(math.lgamma(count + r) - math.lgamma(r) - math.lgamma(count + 1) + r * math.log(p) + count * math.log(1 - p))
    np.testing.assert_allclose(negative_binomial_nll(jnp.asarray(mean), jnp.asarray(count), jnp.asarray(r), 1.0), direct)
    poisson = -(count * math.log(mean) - mean - math.lgamma(count + 1))
    near_poisson = negative_binomial_nll(jnp.asarray(mean), jnp.asarray(count), jnp.asarray(1e8), 1.0)
    np.testing.assert_allclose(near_poisson, poisson, rtol=1e-6)


def test_beta_binomial_matches_the_binomial_limit_and_is_overdispersed():
    k, n, q = 3.0, 10.0, 0.4

    def binomial(q):
        return -(math.log(math.comb(10, 3)) + k * math.log(q) + (n - k) * math.log(1 - q))

    near = beta_binomial_nll(jnp.asarray(q), jnp.asarray(k), jnp.asarray(n), jnp.asarray(1e9), 1.0)
    np.testing.assert_allclose(near, binomial(q), rtol=1e-5)
    # a far-off share costs less under the beta-binomial than under the binomial
    assert beta_binomial_nll(jnp.asarray(0.9), jnp.asarray(k), jnp.asarray(n), jnp.asarray(5.0), 1.0) < binomial(0.9)


def test_inverse_of_the_patent_link():
    p = Params.from_natural(1, patents_intercept=0.7, patents_knowledge_elasticity=1.3).natural()
    counts = jnp.asarray([0.0, 3.0, 250.0])
    state = init_state(Params.from_natural(1, patents_intercept=0.7, patents_knowledge_elasticity=1.3), Graph.empty(),
                       active=jnp.ones((3, 1)), knowledge=knowledge_from_patents(p, counts)[:, None])
    expected = jax.vmap(observe, in_axes=(None, 0))(p, state.regions).patents
    np.testing.assert_allclose(expected, counts + 0.5, rtol=1e-12)


def test_sampled_counts_have_the_negative_binomial_mean_and_variance(key):
    mean, dispersion = jnp.full(200_000, 12.0), jnp.asarray(3.0)
    draws = np.asarray(sample_counts(key, mean, dispersion))
    assert (draws >= 0).all() and np.all(draws == np.round(draws))
    np.testing.assert_allclose(draws.mean(), 12.0, rtol=0.01)
    np.testing.assert_allclose(draws.var(), 12.0 + 12.0**2 / 3.0, rtol=0.03)


def test_deviance_is_zero_at_the_data_and_skips_missing_cells():
    y = np.asarray([[0.0, 5.0], [np.nan, 12.0]])
    assert negative_binomial_deviance(y, np.where(np.isnan(y), 1.0, np.maximum(y, 1e-12)), 4.0) == pytest.approx(0.0, abs=1e-9)
    assert negative_binomial_deviance(y, np.full_like(y, 6.0), 4.0) > 0


def test_count_quantiles_draw_many_counts_around_each_mixture_member():
    # two draws of the mean: the quantiles must come from many counts around each, as the baselines'
    # do, and not from one count per draw; an equal mixture of NB(10, size 5) and NB(40, size 5)
    means = np.broadcast_to(np.array([10.0, 40.0])[:, None, None], (2, 2, 300))
    quantiles, totals = count_quantiles(means, np.full((2, 2, 1), 5.0), (0.05, 0.5, 0.95), jax.random.key(0))
    grid = np.arange(400)
    cdf = 0.5 * (stats.nbinom.cdf(grid, 5, 5 / 15) + stats.nbinom.cdf(grid, 5, 5 / 45))
    exact = np.array([grid[np.argmax(cdf >= q)] for q in (0.05, 0.5, 0.95)])  # 4, 18, 65
    assert quantiles.shape == (3, 2, 300)
    np.testing.assert_allclose(quantiles.mean(axis=-1), exact[:, None] * np.ones(2), atol=0.5)
    assert np.all(quantiles.std(axis=-1) < [[0.5], [1.0], [2.5]])  # 2,000 counts a cell; two would spread ~20 at 95%
    # a total over cells is drawn within one member: its tails are the members' totals, 3,000 and 12,000
    assert totals.shape == (3, 2)
    np.testing.assert_allclose(totals[[0, 2]], [[2878] * 2, [12421] * 2], rtol=0.03)


def test_count_quantiles_hold_means_beyond_the_poisson_samplers_range():
    # a parameter draw far outside the data can give means near 1e20, where NumPy's Poisson refuses
    means = np.array([5.0, 1e20])[:, None, None] * np.ones((2, 1, 4))
    quantiles, _ = count_quantiles(means, np.full((2, 1, 1), 1e6), (0.05, 0.95), jax.random.key(1))
    assert np.all(quantiles[0] < 15) and np.allclose(quantiles[1], 1e20, rtol=1e-2)
    with pytest.raises(ValueError, match="finite"):  # a draw outside the stable range is the caller's to leave out
        count_quantiles(np.array([[[np.nan]]]), 5.0, (0.5,), jax.random.key(0))
