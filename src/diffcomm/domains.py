"""The model on a state x domain panel (`data.domain_panel`): K technology fields at once, the
estimate, the likelihood and the objective a calibration on it minimises (`calibrate_domains.py`).

The model is the metros'; what differs is what the panel observes (`data/panel.py`), hence the
likelihood, a start in balance, each community's latent attraction, and the per-field parameters:

- **inventors** of state r in field k, period p ~ NegativeBinomial(mean = 100 A_rk exp(eta_t), size
  r_I), A read at the period's middle year t: the community itself, in the model's unit of active
  members (hundreds of inventors), counted as the panel counts it, by the patents granted to its
  members, whose national level moves with the same national effect eta_t as the patents'
  (examiner capacity, law, the business cycle). Empty cells (fewer than 30 inventors) are masked.
- **patents of a state** ~ NegativeBinomial(exp(theta_0 + eta_t + theta_G (log sum_k G_rk - m_t)),
  size r_P), the metros' observation model (`observation.py`), with the national effects eta on
  yearly innovations (`effects.national_effects`).
- **patents of a field**: how a period's patents split over the fields ~ Dirichlet-multinomial
  with mean shares sum_r G_rk / sum_rk G_rk and concentration c. The counts include patents made
  outside the states, so only their split is compared, not their level.

Per-field parameters (`per_domain` in `params.py`: critical mass, carrying capacity, clockspeed,
the international frontier) take one value per field; every other parameter, the driver weights
included, is shared. The two noise parameters of the panel (r_I and c) are not model
parameters: they live in `PanelNoise`, beside the model's, and are reported with them.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .config import FitConfig
from .data.panel import INVENTORS_PER_MEMBER, DomainDataset
from .effects import Effects, national_effects, standard_normal_prior
from .inputs import Drivers
from .loss import Prior, gaussian_prior, national_curvature
from .model import balance, init_state, step
from .observation import dirichlet_multinomial_nll, knowledge_from_patents, national_factor, negative_binomial_nll
from .params import NaturalParams, Params, free_mask
from .simulate import make_forcing
from .state import State

NOISE = {
    "inventors_dispersion": (10.0, "r_I: negative binomial size of inventor counts"),
    "domain_concentration": (300.0, "c: Dirichlet-multinomial concentration of the split of patents over fields"),
}
"""The panel's own observation noise: name -> (default, meaning); both positive."""


class PanelNoise(eqx.Module):
    """The panel's observation noise as logarithms (both are sizes that range over orders of
    magnitude: an optimizer's step moves them by a factor, not by a fixed amount)."""

    inventors_dispersion: Float[Array, ""]
    domain_concentration: Float[Array, ""]

    @classmethod
    def default(cls) -> PanelNoise:
        return cls(**{name: jnp.log(jnp.asarray(value, dtype=float)) for name, (value, _) in NOISE.items()})

    def natural(self) -> dict[str, Array]:
        return {name: jnp.exp(getattr(self, name)) for name in NOISE}


class PanelEstimate(eqx.Module):
    """What a panel calibration estimates: the model's parameters, each community's latent
    attraction (`effects.attraction`, standardized, (R, K): per state and field; `buzz_quality`
    stays at zero), the national year innovations (`effects.year`), and the panel's noise."""

    params: Params
    effects: Effects
    noise: PanelNoise

    @classmethod
    def start(cls, params: Params, data: DomainDataset) -> PanelEstimate:
        shape = (data.num_regions, len(data.domains))
        return cls(params, Effects(jnp.zeros(shape), jnp.zeros(data.num_regions), jnp.zeros(data.num_years)),
                   PanelNoise.default())


def panel_mask(estimate: PanelEstimate, config: FitConfig) -> PanelEstimate:
    """What a panel calibration fits: `fit.free`, the communities' attraction, the national
    innovations (`fit.national_effects`) and the noise."""
    effects = Effects(True, False, config.national_effects)
    return PanelEstimate(free_mask(estimate.params, config.free), effects, PanelNoise(True, True))


# --------------------------------------------------------------------------------------------
# The model on the panel
# --------------------------------------------------------------------------------------------


def initial_state(params: Params, data: DomainDataset, attraction: Array | None = None) -> tuple[State, Drivers]:
    """The state at the model's year 0 and the drivers of every year after it.

    Active members come from the first period's inventors, each state's knowledge from its
    patents (the observation model inverted), split over fields as its inventors are. Every
    community then starts in balance (`balance`): its overlap and internationalization at the
    levels its conditions sustain, its passive members and the pull on new members
    (`Drivers.attraction`, per state and field) such that it would keep its first size. The
    community's latent attraction `attraction` (R, K; standardized, at scale `attraction_scale`)
    moves that pull: a community whose later counts stay above its first (a first count that was
    low by chance, or a field that grows in that state) gets a positive one. Without the balance
    every cell was pulled toward one common size (the inflow the driving forces give does not
    scale with a community's size): MALE of the fit 0.34 in 1989, 0.85 in 2016.
    """
    p = params.natural()
    total = knowledge_from_patents(p, data.first_patents)
    share = data.initial_active / jnp.sum(data.initial_active, axis=1, keepdims=True)
    state = init_state(params, data.graph, active=data.initial_active, knowledge=total[:, None] * share)
    regions, offset = jax.vmap(balance, in_axes=(None, 0, 0, None))(p, state.regions, data.drivers,
                                                                      state.world.international_members)
    if attraction is not None:
        offset = offset + p.attraction_scale * attraction
    yearly = dataclasses.replace(data.yearly, attraction=jnp.broadcast_to(offset, (data.num_years, *offset.shape)))
    return State(regions, state.world), yearly


def years_of(drivers: Drivers, rows) -> Drivers:
    """The drivers of the years `rows` (an index or a slice of the leading axis)."""
    return jax.tree_util.tree_map(lambda x: x[rows], drivers)


class Expected(eqx.Module):
    """What the model expects the panel to show in its later periods."""

    inventors: Float[Array, "p r k"]
    patents: Float[Array, "p r"]
    domain_share: Float[Array, "p k"]


def expected(estimate: PanelEstimate, data: DomainDataset) -> Expected:
    """The expected observations of every later period, each one period ahead: the model runs from
    one period's year to the next, and at each period's year its community is set to the
    inventors observed there (where observed and fitted: `data.inventors_mask`), as a filter
    would, before it runs on. So every period's inventors are forecast from the previous period's,
    as a forecast from an origin is (`forecast_inventors`), and the fit learns how far a community
    moves in a period, not only where it settles. Held-out periods are not read: from the last
    fitted period on the model runs free."""
    params = estimate.params
    p = params.natural()
    state, yearly = initial_state(params, data, estimate.effects.attraction)
    eta = national_effects(p, estimate.effects.year)
    at = jnp.asarray(data.observed_at)
    shape = (data.num_years, *data.inventors.shape[1:])
    observed = jnp.zeros(shape, bool).at[at].set(data.inventors_mask > 0)  # the years a community is set to its count
    members = jnp.zeros(shape).at[at].set(data.inventors) / (INVENTORS_PER_MEMBER * jnp.exp(eta)[:, None, None])
    forcing = make_forcing(data.num_years, data.num_regions)

    def one_year(state: State, inputs):  # one scan over the years, not one per period: a program a ninth the size
        drivers, levers, shock, reset, counted = inputs
        new, observations, _ = step(p, state, drivers, data.graph, levers, shock)
        active = new.regions.active
        new = eqx.tree_at(lambda s: s.regions.active, new, jnp.where(reset, counted, active))
        return new, (active, new.regions.knowledge, observations.patents)

    inputs = (yearly, forcing.levers, forcing.shock, observed, members)
    _, (active, knowledge, patents) = jax.lax.scan(jax.checkpoint(one_year), state, inputs)
    factor = national_factor(p, patents, knowledge_from_patents(p, data.first_patents), eta)
    by_field = jnp.sum(knowledge[at], axis=1)
    inventors = INVENTORS_PER_MEMBER * active[at] * jnp.exp(eta[at])[:, None, None]
    return Expected(inventors, patents[at] * jnp.exp(factor[at])[:, None], by_field / jnp.sum(by_field, axis=-1, keepdims=True))


def negative_log_likelihood(estimate: PanelEstimate, data: DomainDataset, out: Expected | None = None) -> Float[Array, ""]:
    """-log p(data | estimate): inventors and state patents (negative binomial), the split of
    patents over fields (Dirichlet-multinomial)."""
    out = expected(estimate, data) if out is None else out
    noise, p = estimate.noise.natural(), estimate.params.natural()
    return (negative_binomial_nll(out.inventors, data.inventors, noise["inventors_dispersion"], data.inventors_mask)
            + negative_binomial_nll(out.patents, data.patents, p.patents_dispersion, data.patents_mask)
            + dirichlet_multinomial_nll(out.domain_share, data.domain_patents, noise["domain_concentration"], data.domain_mask))


def year_information(estimate: PanelEstimate, data: DomainDataset, out: Expected) -> Float[Array, " t"]:
    """The Fisher information of the counts about each simulated year's national effect (zero in
    years no period is read at): d log mu / d eta_t = 1 for state patents and inventors alike."""
    r = estimate.params.natural().patents_dispersion
    r_inventors = estimate.noise.natural()["inventors_dispersion"]
    weights = (jnp.sum(data.patents_mask * out.patents * r / (out.patents + r), axis=1)
               + jnp.sum(data.inventors_mask * out.inventors * r_inventors / (out.inventors + r_inventors), axis=(1, 2)))
    return jnp.zeros(data.num_years, weights.dtype).at[jnp.asarray(data.observed_at)].set(weights)


def community_information(estimate: PanelEstimate, data: DomainDataset, out: Expected) -> Float[Array, "r k"]:
    """The Fisher information of each community's inventor counts about its own latent attraction,
    per unit of the effect: sum_p w_p (d log mu_p / d u)^2 with u = scale x z, the derivatives read
    by one forward-mode product along every community's effect at once (a colouring: one
    community's pull moves another's counts only through the international community and the
    frontier, terms of order 1/(R K) that are left out)."""
    r = estimate.noise.natural()["inventors_dispersion"]
    weights = data.inventors_mask * out.inventors * r / (out.inventors + r)
    z = estimate.effects.attraction

    def log_mean(z):
        return jnp.log(expected(eqx.tree_at(lambda e: e.effects.attraction, estimate, z), data).inventors)

    _, sensitivity = jax.jvp(log_mean, (z,), (jnp.ones_like(z),))
    return jnp.sum(weights * sensitivity**2, axis=0) / estimate.params.natural().attraction_scale ** 2


class Information(eqx.Module):
    """What the curvature term holds fixed: per community (R, K) and per year (T,)."""

    community: Float[Array, "r k"]
    year: Float[Array, " t"]


def information_of(estimate: PanelEstimate, data: DomainDataset, out: Expected) -> Information:
    return Information(community_information(estimate, data, out), year_information(estimate, data, out))


def curvature(p: NaturalParams, held: Information, national: bool) -> Float[Array, ""]:
    """1/2 log det of the posterior precision of the standardized latent effects, the term that
    makes the objective the Laplace approximation of the parameters' marginal posterior and lets
    the scales be estimated (`loss.latent_curvature` says why): 1/2 sum log(1 + s^2 I_rk) over the
    communities and `loss.national_curvature` for the years."""
    total = 0.5 * jnp.sum(jnp.log1p(p.attraction_scale**2 * held.community))
    return total + national_curvature(p, held.year) if national else total


def negative_log_prior(estimate: PanelEstimate, prior: Prior) -> Float[Array, ""]:
    """The parameters' Gaussians (`loss.gaussian_prior`), N(0, 1) on the innovations, and the same
    Gaussian as the parameters' around the noise defaults."""
    noise = jnp.zeros(())
    if prior.scale is not None:
        start = PanelNoise.default()
        noise = sum(0.5 * ((getattr(estimate.noise, n) - getattr(start, n)) / prior.scale) ** 2 for n in NOISE)
    return gaussian_prior(estimate.params, prior) + standard_normal_prior(estimate.effects) + noise


def negative_log_posterior(estimate: PanelEstimate, data: DomainDataset, prior: Prior,
                           information: Information | None = None) -> Float[Array, ""]:
    """The likelihood, the prior and the latent effects' curvature term (`curvature`), its
    information held at `information`, or at this estimate for the value and held for the
    gradient (None), as on the metros."""
    out = expected(estimate, data)
    held = jax.lax.stop_gradient(information_of(estimate, data, out)) if information is None else information
    return (negative_log_likelihood(estimate, data, out) + negative_log_prior(estimate, prior)
            + curvature(estimate.params.natural(), held, prior.national))


def objective(estimate: PanelEstimate, data: DomainDataset, prior: Prior) -> Float[Array, ""]:
    """What a panel calibration minimises: the negative log posterior per observation."""
    return negative_log_posterior(estimate, data, prior) / data.num_observations


def frozen_objective(estimate: PanelEstimate, data: DomainDataset, prior: Prior, information: Information) -> Float[Array, ""]:
    return negative_log_posterior(estimate, data, prior, information) / data.num_observations


@eqx.filter_jit
def compiled_information(estimate: PanelEstimate, data: DomainDataset, prior: Prior) -> Information:
    """`information_of` at `estimate` (compiled; `prior` is the polish's signature)."""
    return information_of(estimate, data, expected(estimate, data))


_compiled_expected = eqx.filter_jit(expected)  # one wrapper, so that its compiled program is kept between calls


def fitted_inventors(estimate: PanelEstimate, data: DomainDataset) -> np.ndarray:
    """The model's expected inventors of every later period (P, R, K), for reports."""
    return np.asarray(_compiled_expected(estimate, data).inventors)
