"""Likelihood terms and the calibration loss.

Each term is pure, `(prediction, observation, mask) -> scalar`, a negative log-likelihood
summed over observed cells (mask 1) and never reading config. `calibration_loss` simulates the
model from the data's first year and sums the terms the data set has.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln
from jaxtyping import Array, Float

from .model import Drivers, Graph, Params, init_state
from .simulate import make_forcing, simulate


def negative_binomial_nll(mean: Array, count: Array, dispersion: Array, mask: Array) -> Float[Array, ""]:
    """-log NB(count | mean, size = dispersion), summed where mask is 1.

    Variance is mean + mean^2 / dispersion; large dispersion approaches the Poisson.
    """
    r = dispersion
    log_p = (
        gammaln(count + r)
        - gammaln(r)
        - gammaln(count + 1.0)
        + r * (jnp.log(r) - jnp.log(r + mean))
        + count * (jnp.log(mean) - jnp.log(r + mean))
    )
    return -jnp.sum(jnp.where(mask > 0, log_p, 0.0))


def binomial_nll(probability: Array, successes: Array, trials: Array, mask: Array) -> Float[Array, ""]:
    """-log Binomial(successes | trials, probability), summed where mask is 1."""
    log_p = (
        gammaln(trials + 1.0)
        - gammaln(successes + 1.0)
        - gammaln(trials - successes + 1.0)
        + successes * jnp.log(probability)
        + (trials - successes) * jnp.log1p(-probability)
    )
    return -jnp.sum(jnp.where(mask > 0, log_p, 0.0))


def beta_binomial_nll(
    probability: Array, successes: Array, trials: Array, concentration: Array, mask: Array
) -> Float[Array, ""]:
    """-log BetaBinomial(successes | trials, mean probability, concentration), summed where mask is 1.

    The success probability varies around `probability` as Beta(c p, c (1 - p)); as the
    concentration c grows this becomes the binomial. Counts of connections are overdispersed
    (one firm's portfolio moves many patents at once), so the binomial is far too sure of them.
    """
    a = concentration * probability
    b = concentration * (1.0 - probability)
    log_p = (
        gammaln(trials + 1.0)
        - gammaln(successes + 1.0)
        - gammaln(trials - successes + 1.0)
        + gammaln(successes + a)
        + gammaln(trials - successes + b)
        - gammaln(trials + a + b)
        + gammaln(a + b)
        - gammaln(a)
        - gammaln(b)
    )
    return -jnp.sum(jnp.where(mask > 0, log_p, 0.0))


def lognormal_nll(prediction: Array, observation: Array, sigma: Array, mask: Array) -> Float[Array, ""]:
    """-log LogNormal(observation | log prediction, sigma), summed where mask is 1 (exports, Y)."""
    safe = jnp.where(mask > 0, observation, 1.0)
    z = (jnp.log(safe) - jnp.log(prediction)) / sigma
    log_p = -0.5 * z**2 - jnp.log(sigma) - jnp.log(safe) - 0.5 * jnp.log(2 * jnp.pi)
    return -jnp.sum(jnp.where(mask > 0, log_p, 0.0))


class CalibrationInputs(eqx.Module):
    """The arrays of a `Dataset` that the loss needs (a pytree, so it can be traced)."""

    drivers: Drivers
    graph: Graph
    first_patents: Float[Array, " r"]
    initial_active: Float[Array, " r"]
    initial_internationalization: Float[Array, " r"]
    patents: Float[Array, "t r"]
    patents_mask: Float[Array, "t r"]
    nonlocal_count: Float[Array, " r"]
    linkage_total: Float[Array, " r"]
    linkage_mask: Float[Array, " r"]

    @classmethod
    def from_dataset(cls, dataset) -> "CalibrationInputs":
        obs = dataset.observed
        return cls(
            dataset.drivers,
            dataset.graph,
            jnp.asarray(dataset.first_patents, dtype=float),
            jnp.asarray(dataset.initial_active, dtype=float),
            jnp.asarray(dataset.initial_internationalization, dtype=float),
            obs.patents,
            obs.patents_mask,
            obs.nonlocal_count,
            obs.linkage_total,
            obs.linkage_mask,
        )

    @property
    def num_observations(self) -> Array:
        return jnp.sum(self.patents_mask) + jnp.sum(self.linkage_mask)


def knowledge_from_patents(params: Params, counts: Array) -> Array:
    """Total knowledge that the patent observation model maps to `counts` (+0.5, so that zero
    counts stay finite): the inverse of `patents = exp(theta_0 + theta_G log sum_k G_k)`."""
    p = params.natural()
    return jnp.exp((jnp.log(counts + 0.5) - p.patents_intercept) / p.patents_knowledge_elasticity)


def initial_state_from_data(params: Params, inputs: CalibrationInputs):
    """The state in the first year: knowledge from the observed patent count (split evenly over
    domains), active members and internationalization from data.
    """
    num_domains = params.num_domains
    knowledge = knowledge_from_patents(params, inputs.first_patents)[:, None] / num_domains * jnp.ones((1, num_domains))
    active = inputs.initial_active[:, None] / num_domains * jnp.ones((1, num_domains))
    internationalization = jnp.clip(inputs.initial_internationalization, 0.01, 0.99)[:, None] * jnp.ones((1, num_domains))
    return init_state(params, inputs.graph, active=active, knowledge=knowledge, internationalization=internationalization)


def simulate_from_data(params: Params, inputs: CalibrationInputs, num_years: int, *, checkpoint: bool = False):
    """Simulate `num_years` years after the data's first year; returns the final state and the
    observations of every year (T, R)."""
    state = initial_state_from_data(params, inputs)
    forcing = make_forcing(num_years, inputs.first_patents.shape[0])
    final, traj = simulate(params, state, inputs.drivers, inputs.graph, forcing, record_states=False, checkpoint=checkpoint)
    return final, traj.observations


def predict(params: Params, inputs: CalibrationInputs, num_years: int, *, checkpoint: bool = False):
    """Simulate `num_years` years after the first; returns the trajectory's observations (T, R)."""
    return simulate_from_data(params, inputs, num_years, checkpoint=checkpoint)[1]


def calibration_loss(params: Params, inputs: CalibrationInputs) -> Float[Array, ""]:
    """Total negative log-likelihood of the data set's observations under the model."""
    obs = predict(params, inputs, inputs.patents.shape[0], checkpoint=True)
    p = params.natural()
    loss = negative_binomial_nll(obs.patents, inputs.patents, p.patents_dispersion, inputs.patents_mask)
    share = jnp.mean(obs.nonlocal_share, axis=0)
    loss = loss + beta_binomial_nll(
        share, inputs.nonlocal_count, inputs.linkage_total, p.nonlocal_concentration, inputs.linkage_mask
    )
    return loss


def nb_sample(key: jax.Array, mean: Array, dispersion: Array) -> Array:
    """Draws from NB(mean, size = dispersion) as a gamma-Poisson mixture."""
    k_gamma, k_poisson = jax.random.split(key)
    rate = jax.random.gamma(k_gamma, dispersion, shape=mean.shape) * mean / dispersion
    return jax.random.poisson(k_poisson, rate).astype(mean.dtype)


def gaussian_prior(params: Params, centre: Params, free_spec: Params, scale: float) -> Float[Array, ""]:
    """-log N(raw | raw_centre, scale^2) summed over the free parameters (unconstrained scale).

    A weak prior keeps weakly identified directions from wandering; with it the calibration
    is a MAP estimate and the Laplace approximation is of the posterior.
    """
    terms = jax.tree_util.tree_map(
        lambda x, c, free: jnp.sum(0.5 * ((x - c) / scale) ** 2) if free else 0.0, params, centre, free_spec
    )
    return sum(jax.tree_util.tree_leaves(terms))
