"""The calibration objective: likelihood of the data, priors, per observation.

`negative_log_likelihood` simulates the model from the data's first year with the estimate's
latent region effects, applies the national effects to expected patents, and sums the
observation model's terms (`observation.py`) over observed cells; `log_prior` holds weak
Gaussians on the free parameters and N(0, 1) on the standardized effects; `objective` is what
the optimiser minimises, their sum divided by the number of observations (so that step sizes do
not depend on the data's size). All are pure functions of the estimate and data and never read config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .effects import Estimate, national_effects, region_effect_scales, standard_normal_prior
from .model import step
from .observation import beta_binomial_nll, national_factor, negative_binomial_nll
from .params import PARAMETERS, NaturalParams, Params
from .simulate import first_knowledge, initial_state, make_forcing, region_drivers, restart_knowledge, simulate_from_data
from .state import State

if TYPE_CHECKING:
    from .data import Dataset


def expected_patents(estimate: Estimate, data: Dataset, precision=None) -> tuple[Float[Array, "t r"], Float[Array, "t r"]]:
    """Expected patents in the years after the first (T, R), with the national effects, and the
    simulated non-local share (T, R): along one free path from the first year, or with
    `data.one_step_ahead` each year from the counts observed the year before (`conditioned_path`).
    `precision` (a float dtype): computed in it, returned in the estimate's (`in_precision`)."""
    if precision is not None and jnp.dtype(precision) != estimate.params.dtype:
        dtype = estimate.params.dtype
        return in_precision(expected_patents(in_precision(estimate, precision), in_precision(data, precision)), dtype)
    if data.one_step_ahead:
        *_, patents, share = one_step_path(estimate, data)
        return patents, share
    predicted, factor = free_path(estimate, data)
    return predicted.patents * jnp.exp(factor)[:, None], predicted.nonlocal_share


def free_path(estimate: Estimate, data: Dataset):
    """The model's own observations along one free path from the first year (`simulate_from_data`)
    and the national factor (T,) that turns its patents into expected counts (`national_factor`)."""
    params, p = estimate.params, estimate.params.natural()
    _, predicted = simulate_from_data(params, data, data.patents.shape[0], effects=estimate.effects, checkpoint=True)
    eta = national_effects(p, estimate.effects.year)
    return predicted, national_factor(p, predicted.patents, first_knowledge(params, data), eta)


def in_precision(tree, dtype):
    """`tree` with every floating array in `dtype`. The simulation in single precision costs
    0.6 of double on CPU (`benchmarks/bench_posterior_gradient.py`); a sampler computes the
    likelihood and its sum in double from single-precision expectations (`posterior.py`)."""
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree)


def observed_counts(data: Dataset) -> Float[Array, "t r"]:
    """The fitted counts of the years after the first, NaN where not observed or held out."""
    return jnp.where(data.patents_mask > 0, data.patents, jnp.nan)


def conditioned_path(estimate: Estimate, data: Dataset, counts: Float[Array, "t r"], eta: Float[Array, " t"]
                     ) -> tuple[State, Float[Array, ""], Float[Array, "t r"], Float[Array, "t r"], Float[Array, "t r"]]:
    """The model run year by year with each region's knowledge restarted, at the end of every
    year, from that year's count in `counts` (T, R; NaN: not restarted, the region runs on), read
    at the year's national factor (`simulate.restart_knowledge`). So each year is expected from
    the year before's count, one step ahead, as a forecast is from its origin; members, overlap
    and ties run on, driven by the restarted knowledge.

    The national factor removes the model's own growth from the national level (`national_factor`);
    a restart is not growth, so the growth m_t adds up each year's step only, from the knowledge
    restarted to the knowledge one year on (as a forecast continues it from its origin).

    **Returns:** the state after the last year (restarted where counted), the growth m_T there,
    the model's own patents (T, R), expected patents with the national factor (T, R), and the
    non-local share (T, R).
    """
    params = estimate.params
    p = params.natural()
    drivers = region_drivers(params, data, estimate.effects)
    forcing = make_forcing(counts.shape[0], data.num_regions, dtype=params.dtype)

    def one_year(carry, inputs):
        state, growth = carry
        levers, shock, count, national = inputs
        before = jnp.log(jnp.sum(state.regions.knowledge))
        new, observations, _ = step(p, state, drivers, data.graph, levers, shock)
        growth = growth + jnp.log(jnp.sum(new.regions.knowledge)) - before
        factor = national - p.patents_knowledge_elasticity * growth
        new = restart_knowledge(params, new, count, factor)
        return (new, growth), (observations.patents, factor, observations.nonlocal_share)

    start = (initial_state(params, data, drivers, checkpoint=True), jnp.zeros((), eta.dtype))
    inputs = (forcing.levers, forcing.shock, counts, eta)
    (final, growth), (own, factor, share) = jax.lax.scan(jax.checkpoint(one_year), start, inputs)
    return final, growth, own, own * jnp.exp(factor)[:, None], share


def one_step_path(estimate: Estimate, data: Dataset) -> tuple:
    """`conditioned_path` over the data's own fitted counts, at the estimate's national effects:
    what the fit compares with the data under `data.one_step_ahead`."""
    eta = national_effects(estimate.params.natural(), estimate.effects.year)
    return conditioned_path(estimate, data, observed_counts(data), eta)


NOISE_PARAMETERS = ("patents_dispersion", "nonlocal_concentration")
"""The parameters of the observation noise: they move no expected value (`fitted_outputs`)."""


def fitted_outputs(estimate: Estimate, data: Dataset) -> tuple[Float[Array, "t r"], Float[Array, " r"]]:
    """What the likelihood compares with the data: log expected patents (T, R) and the logit of
    the non-local share averaged over the fitted years (R,)."""
    patents, nonlocal_share = expected_patents(estimate, data)
    share = jnp.sum(nonlocal_share * data.window[:, None], axis=0) / jnp.sum(data.window)
    return jnp.log(patents), jax.scipy.special.logit(share)


def region_outputs(estimate: Estimate, data: Dataset) -> tuple[Float[Array, "t r"], Float[Array, " r"]]:
    """`fitted_outputs` without the national factor's dependence on the model's total knowledge:
    what a region's own latent effects move, to first order. (The factor moves every region by
    the average effect, a term of order 1/R per region; a colouring that perturbs every region's
    effect at once would add up those terms into one of order 1.)"""
    if data.one_step_ahead:
        _, _, own, _, nonlocal_share = one_step_path(estimate, data)
    else:
        observed = simulate_from_data(estimate.params, data, data.patents.shape[0], effects=estimate.effects,
                                      checkpoint=True)[1]
        own, nonlocal_share = observed.patents, observed.nonlocal_share
    share = jnp.sum(nonlocal_share * data.window[:, None], axis=0) / jnp.sum(data.window)
    return jnp.log(own), jax.scipy.special.logit(share)


def fisher_weights(estimate: Estimate, data: Dataset) -> tuple[Float[Array, "t r"], Float[Array, " r"]]:
    """The Fisher information of each observed cell about its `fitted_outputs`: mu r / (mu + r)
    for a negative binomial count on the log scale, and n p (1 - p) (c + 1) / (c + n) for a
    beta-binomial count of n trials on the logit scale (zero where not observed)."""
    p = estimate.params.natural()
    patents, nonlocal_share = expected_patents(estimate, data)
    c = p.nonlocal_concentration
    share = jnp.sum(nonlocal_share * data.window[:, None], axis=0) / jnp.sum(data.window)
    n = data.linkage_total
    return count_weights(p, data, patents), data.linkage_mask * n * share * (1 - share) * (c + 1) / (c + n)


def negative_log_likelihood(estimate: Estimate, data: Dataset, precision=None) -> Float[Array, ""]:
    """-log p(data | estimate): negative binomial patents plus beta-binomial non-local linkages.

    The linkage counts span a period, so they are compared with the simulated non-local share
    averaged over the fitted years (`data.window`). `precision`: that of the expectations
    (`expected_patents`); the likelihood is in the estimate's.
    """
    patents, nonlocal_share = expected_patents(estimate, data, precision)
    return _likelihood_terms(estimate, data, patents, nonlocal_share)


def _likelihood_terms(estimate: Estimate, data: Dataset, patents: Array, nonlocal_share: Array) -> Float[Array, ""]:
    p = estimate.params.natural()
    loss = negative_binomial_nll(patents, data.patents, p.patents_dispersion, data.patents_mask)
    share = jnp.sum(nonlocal_share * data.window[:, None], axis=0) / jnp.sum(data.window)
    return loss + beta_binomial_nll(share, data.nonlocal_count, data.linkage_total, p.nonlocal_concentration,
                                    data.linkage_mask)


def count_weights(p: NaturalParams, data: Dataset, patents: Array) -> Float[Array, "t r"]:
    """The negative binomial's Fisher information about log mu of each observed count, at the
    expected counts `patents`: mu r / (mu + r), zero where not observed."""
    return data.patents_mask * patents * p.patents_dispersion / (patents + p.patents_dispersion)


def region_information(estimate: Estimate, data: Dataset, region_effects: tuple[str, ...],
                       patents: Array) -> Float[Array, "r e e"]:
    """The negative binomial's Fisher information about each region's latent effects, per unit of
    the effect itself (E x E per region): from d log mu_rt / d b_re, one forward-mode product per
    effect (a colouring: a region's effect moves other regions' counts only through ties, the
    international community and the national factor, terms of order 1/R that are left out, see
    `region_outputs`). `patents`: the expected counts at the estimate (`expected_patents`)."""
    params, p = estimate.params, estimate.params.natural()
    scales = region_effect_scales(p, region_effects)

    def log_mean(latent):
        effects = eqx.tree_at(lambda e: [getattr(e, n) for n in region_effects], estimate.effects, list(latent))
        return region_outputs(Estimate(params, effects), data)[0]

    primal = [getattr(estimate.effects, name) for name in region_effects]
    _, linear = jax.linearize(log_mean, primal)
    ones = jnp.ones_like(primal[0])
    sensitivity = jnp.stack([linear([ones if i == j else jnp.zeros_like(ones) for j in range(len(primal))])
                             for i in range(len(primal))]) / scales[:, None, None]  # (E, T, R)
    return jnp.einsum("etr,ftr,tr->ref", sensitivity, sensitivity, count_weights(p, data, patents))


class Information(eqx.Module):
    """What the latent curvature term holds fixed (`latent_curvature`): the negative binomial's
    Fisher information about each region's effects per unit of effect (`region_information`;
    None without region effects) and about each count's log mean (`count_weights`)."""

    region: Float[Array, "r e e"] | None
    counts: Float[Array, "t r"]


def curvature_information(estimate: Estimate, data: Dataset, prior: Prior, patents: Array) -> Information:
    """The `Information` at `estimate`; `patents`: its expected counts (`expected_patents`)."""
    region = region_information(estimate, data, prior.region_effects, patents) if prior.region_effects else None
    return Information(region, count_weights(estimate.params.natural(), data, patents))


def latent_curvature(estimate: Estimate, data: Dataset, prior: Prior, patents: Array,
                     information: Information | None = None) -> Float[Array, ""]:
    """1/2 log det of the posterior precision of the standardized latent effects: the term that
    turns the joint density of parameters and effects into the Laplace approximation of the
    marginal density of the parameters (as lme4 and TMB do).

    Without it the joint mode drives every effect's scale up without bound: a larger scale lets
    smaller standardized effects carry the same fit at a smaller N(0, 1) penalty. With it a
    scale is estimated as a variance component. The precision is the Gauss-Newton one, 1 + the
    negative binomial's Fisher information, with the information per unit of effect held fixed
    (`Information`), so that the term moves only the scales and the national persistence, as
    penalized quasi-likelihood holds its working weights fixed. With the information's own
    gradient the fit lowers the term by lowering the information rather than by fitting the
    data: on the metros the L-BFGS polish then took the objective from 3.053 to 2.986 per
    observation while the likelihood got worse (2.696 to 2.731), decay went to zero and the
    scale of attraction to 2.2 and rising. NUTS, which integrates the effects without this term,
    goes the same way (`experiments/posterior`: decay 0.05 and attraction scale 2.3 with both
    effects, decay 0.11 with buzz quality alone), so holding the information is a choice of
    estimator that departs from the marginal posterior, not a correction of it.

    - region effects: `region_information`, three simulations' worth of forward-mode work;
    - national innovations: d log mu_rt / d eta_t = 1, so the information of year t is the sum
      over regions of the Fisher weights, mapped to the innovations through the AR(1) recursion.

    `information`: held at another estimate (`frozen_objective`); None: at this one, under
    `stop_gradient` (held for the gradient, recomputed at every evaluation: holding it fixed for
    a whole Adam phase from the start let the scales drift to 1.4 and 2.1 instead of 0.8 and 1.4).
    """
    if information is None:
        information = jax.lax.stop_gradient(curvature_information(estimate, data, prior, patents))
    p = estimate.params.natural()
    total = jnp.zeros(())
    if prior.region_effects:
        scales = region_effect_scales(p, prior.region_effects)
        precision = jnp.eye(len(prior.region_effects)) + scales[:, None] * information.region * scales[None, :]
        total = total + 0.5 * jnp.sum(jnp.linalg.slogdet(precision)[1])
    if prior.national:
        total = total + national_curvature(p, jnp.sum(information.counts, axis=1), differenced=data.one_step_ahead)
    return total


def national_curvature(p: NaturalParams, year_information: Float[Array, " t"], *, differenced: bool = False
                       ) -> Float[Array, ""]:
    """1/2 log det of the posterior precision of the national innovations eps_1..eps_T, given the
    Fisher information about each year's national effect `year_information` (T,) (the sum over
    regions of the counts' weights, since d log mu_rt / d eta_t = 1), mapped to the innovations
    through the AR(1) recursion (`effects.national_effects`). `differenced`: counts expected one
    step ahead (`conditioned_path`) read the change eta_t - eta_t-1 instead (the restart from
    the year before's count takes eta_t-1 out; the first year's effect is 0)."""
    num_years = year_information.shape[0]
    lag = jnp.arange(num_years)[:, None] - jnp.arange(num_years)[None, :]
    mapping = jnp.where(lag >= 0, p.national_shock_scale * p.national_persistence ** jnp.maximum(lag, 0), 0.0)
    if differenced:
        mapping = mapping - jnp.concatenate([jnp.zeros((1, num_years), mapping.dtype), mapping[:-1]])
    precision = jnp.eye(num_years) + mapping.T @ (year_information[:, None] * mapping)
    return 0.5 * jnp.linalg.slogdet(precision)[1]


class Prior(eqx.Module):
    """What is estimated and the prior over it.

    Independent Gaussians on the unconstrained scale around `centre`, over the free parameters
    (`scale=None`: none, maximum likelihood for them), and N(0, 1) on the standardized latent
    effects that are estimated (`region_effects`, `national`): these are part of the model, not
    a choice of fit. With a prior the calibration is a maximum a posteriori estimate and the
    Laplace approximation is of the posterior.
    """

    centre: Params
    free: tuple[str, ...] = eqx.field(static=True)
    scale: float | None = eqx.field(static=True)
    region_effects: tuple[str, ...] = eqx.field(static=True, default=())
    national: bool = eqx.field(static=True, default=False)



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


def negative_log_prior(estimate: Estimate, prior: Prior) -> Float[Array, ""]:
    """-log p(estimate) up to a constant: the parameters' Gaussians and the effects' N(0, 1)."""
    return gaussian_prior(estimate.params, prior) + standard_normal_prior(estimate.effects)


def log_joint(estimate: Estimate, data: Dataset, prior: Prior, precision=None) -> Float[Array, ""]:
    """log p(data, estimate) up to a constant: the likelihood and the prior, without the latent
    curvature term; the density a sampler integrates the latent effects over (`posterior.py`).
    `precision`: that of the simulation (`expected_patents`)."""
    return -(negative_log_likelihood(estimate, data, precision) + negative_log_prior(estimate, prior))


def negative_log_posterior(estimate: Estimate, data: Dataset, prior: Prior,
                           information: Information | None = None) -> Float[Array, ""]:
    """-log p(estimate | data) up to a constant: the likelihood, the prior, and the latent
    effects' curvature term (`latent_curvature`), which makes it the Laplace approximation of
    the marginal posterior of the parameters, jointly maximised with the effects' conditional mode.
    `information`: the curvature's, held at another estimate (`latent_curvature`)."""
    patents, nonlocal_share = expected_patents(estimate, data)
    return (_likelihood_terms(estimate, data, patents, nonlocal_share) + negative_log_prior(estimate, prior)
            + latent_curvature(estimate, data, prior, patents, information))


def objective(estimate: Estimate, data: Dataset, prior: Prior) -> Float[Array, ""]:
    """What calibration minimises: the negative log posterior per observation."""
    return negative_log_posterior(estimate, data, prior) / data.num_observations


def frozen_objective(estimate: Estimate, data: Dataset, prior: Prior, information: Information) -> Float[Array, ""]:
    """`objective` with the curvature's information held at a reference estimate: a function
    whose gradient is that of its value, which `objective`'s (the information held for the
    gradient only) is not. Equal to `objective` at the reference, with the same gradient there;
    the L-BFGS polish, whose line search compares values, minimises it (`calibrate.polish`)."""
    return negative_log_posterior(estimate, data, prior, information) / data.num_observations
