"""The calibration objective: likelihood of the data, a weak prior, per observation.

`negative_log_likelihood` simulates the model from the data's first year and sums the
observation model's terms (`observation.py`) over observed cells; `gaussian_prior` keeps weakly
identified directions from wandering; `objective` is what the optimiser minimises, their sum
divided by the number of observations (so that step sizes do not depend on the data's size).
All three are pure functions of parameters and data and never read config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .observation import beta_binomial_nll, negative_binomial_nll
from .params import PARAMETERS, Params
from .simulate import simulate_from_data

if TYPE_CHECKING:
    from .data import Dataset


def negative_log_likelihood(params: Params, data: Dataset) -> Float[Array, ""]:
    """-log p(data | params): negative binomial patents plus beta-binomial non-local linkages.

    The linkage counts span a period, so they are compared with the simulated non-local share
    averaged over the fitted years (`data.window`).
    """
    _, predicted = simulate_from_data(params, data, data.patents.shape[0], checkpoint=True)
    p = params.natural()
    loss = negative_binomial_nll(predicted.patents, data.patents, p.patents_dispersion, data.patents_mask)
    share = jnp.sum(predicted.nonlocal_share * data.window[:, None], axis=0) / jnp.sum(data.window)
    return loss + beta_binomial_nll(share, data.nonlocal_count, data.linkage_total, p.nonlocal_concentration,
                                    data.linkage_mask)


class Prior(eqx.Module):
    """Independent Gaussians on the unconstrained scale around `centre`, over the free parameters.

    With a prior the calibration is a maximum a posteriori estimate and the Laplace approximation
    is of the posterior. `scale=None`: no prior (maximum likelihood).
    """

    centre: Params
    free: tuple[str, ...] = eqx.field(static=True)
    scale: float | None = eqx.field(static=True)


def gaussian_prior(params: Params, prior: Prior) -> Float[Array, ""]:
    """-log N(unconstrained | centre, scale^2), summed over the free parameters (constants dropped)."""
    if prior.scale is None:
        return jnp.zeros(())
    terms = [
        jnp.sum(0.5 * ((params.unconstrained[name] - prior.centre.unconstrained[name]) / prior.scale) ** 2)
        for name in PARAMETERS
        if name in prior.free
    ]
    return sum(terms)


def negative_log_posterior(params: Params, data: Dataset, prior: Prior) -> Float[Array, ""]:
    """-log p(params | data) up to a constant: the likelihood and the prior."""
    return negative_log_likelihood(params, data) + gaussian_prior(params, prior)


def objective(params: Params, data: Dataset, prior: Prior) -> Float[Array, ""]:
    """What calibration minimises: the negative log posterior per observation."""
    return negative_log_posterior(params, data, prior) / data.num_observations
