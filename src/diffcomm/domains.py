"""Calibration on a state x domain panel (`data.domain_panel`): K technology fields at once.

The model, the batched restarts, the L-BFGS polish and the rolling origin are those of the
metros (`calibrate.py`, `evaluation.py`); what differs is what the panel observes
(`data/panel.py`), hence the likelihood, and the per-field parameters:

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
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from .baselines import horizon_dispersion, national_drift, persistence, predictive_quantiles
from .calibrate import FitResult, Problem, calibration_prior, polish
from .config import CalibrateConfig, FitConfig
from .data.panel import INVENTORS_PER_MEMBER, DomainDataset
from .effects import Effects, national_effects, standard_normal_prior
from .errors import ConfigError
from .files import atomic_path, write_json
from .fitting import fit
from .forecast import INTERVALS
from .inputs import Drivers
from .laplace import Laplace, free_natural, stack_draws
from .loss import Prior, gaussian_prior, national_curvature
from .model import (
    activation_rate,
    attrition_rate,
    inflow_of_new_members,
    init_state,
    internationalization_target,
    overlap_formation,
    reproduction,
)
from .observation import (
    dirichlet_multinomial_nll,
    knowledge_from_patents,
    national_factor,
    negative_binomial_nll,
    sample_counts,
)
from .params import PARAMETERS, NaturalParams, Params, free_mask
from .simulate import make_forcing, restart_knowledge, simulate
from .state import RegionState, State
from .training import adam_with_warmup

log = logging.getLogger(__name__)

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


def balance(p: NaturalParams, s: RegionState, d: Drivers, members: Array) -> tuple[RegionState, Array]:
    """One region's state in balance at its active members, and the inflow offset that holds it
    there (K,), from the model's own yearly flows (`model.py`) with no shock:

    - overlap X* = new / (delta_X + new) and internationalization F* = gain / delta_F, the fixed
      points of their updates;
    - active members lose A leave(attrition) a year and gain reproduction; activation must make
      up the difference (at least 1% of the loss: a community above its critical mass that grows
      by itself keeps growing), which takes P* = activation / (leave(a + delta_P) a / (a + delta_P))
      passive members, fed by an inflow of P* leave(a + delta_P);
    - the offset is log of that inflow less log of the inflow the drivers give.
    """
    zero = jnp.zeros(())
    new_overlap = overlap_formation(p, s, d, members, zero)
    s = dataclasses.replace(s, overlap=new_overlap / (p.overlap_decay + new_overlap))
    log_active = jnp.log(s.active)
    s = dataclasses.replace(s, internationalization=internationalization_target(p, s, d, zero, log_active) / p.export_decay)
    lost = s.active * -jnp.expm1(-attrition_rate(p, s, d))
    activation = jnp.maximum(lost - reproduction(p, s, log_active), 0.01 * lost)
    rate = activation_rate(p, s, d)
    leaving = -jnp.expm1(-(rate + p.passive_attrition))
    passive = activation * (rate + p.passive_attrition) / (leaving * rate)
    offset = jnp.log(passive * leaving) - jnp.log(inflow_of_new_members(p, s, d, zero))
    return dataclasses.replace(s, passive=passive), offset


def _years(drivers: Drivers, rows) -> Drivers:
    return jax.tree_util.tree_map(lambda x: x[rows], drivers)


class Expected(eqx.Module):
    """What the model expects the panel to show in its later periods."""

    inventors: Float[Array, "p r k"]
    patents: Float[Array, "p r"]
    domain_share: Float[Array, "p k"]


def expected(estimate: PanelEstimate, data: DomainDataset) -> Expected:
    """The expected observations of every later period, from a simulation of every year."""
    params = estimate.params
    p = params.natural()
    state, yearly = initial_state(params, data, estimate.effects.attraction)
    forcing = make_forcing(data.num_years, data.num_regions, drivers=yearly)
    _, traj = simulate(params, state, data.drivers, data.graph, forcing, checkpoint=True)
    at = jnp.asarray(data.observed_at)
    first = knowledge_from_patents(p, data.first_patents)
    eta = national_effects(p, estimate.effects.year)
    factor = national_factor(p, traj.observations.patents, first, eta)
    by_field = jnp.sum(traj.regions.knowledge[at], axis=1)
    inventors = INVENTORS_PER_MEMBER * traj.regions.active[at] * jnp.exp(eta[at])[:, None, None]
    return Expected(inventors, traj.observations.patents[at] * jnp.exp(factor[at])[:, None],
                    by_field / jnp.sum(by_field, axis=-1, keepdims=True))


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
def _information(estimate: PanelEstimate, data: DomainDataset, prior: Prior) -> Information:
    return information_of(estimate, data, expected(estimate, data))


PANEL = Problem(eqx.filter_jit(objective), frozen_objective, _information, panel_mask)
"""The panel's problem for `calibrate.polish`."""


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


@dataclass
class PanelCalibration:
    """A calibrated panel model: the estimate, its Laplace approximation (`noise` holds the
    panel's noise parameters with their standard errors), and the fits that found it."""

    config: CalibrateConfig
    estimate: PanelEstimate
    laplace: Laplace
    noise: pd.DataFrame  # parameter, value, se
    restarts: FitResult
    polished: FitResult | None

    @property
    def params(self) -> Params:
        return self.estimate.params

    @property
    def result(self) -> FitResult:
        return self.polished or self.restarts


def check_panel(data: DomainDataset, config: CalibrateConfig) -> None:
    """Raise `ConfigError` unless the config fits the panel: K, and origins that are periods."""
    if config.model.num_domains != len(data.domains):
        raise ConfigError(f"model.num_domains must be {len(data.domains)} (the fields of {config.data.domain_panel}), "
                          f"got {config.model.num_domains}")
    if config.evaluation.rolling_origin:
        later = list(data.periods[1:])
        for origin in config.evaluation.origins:
            if origin not in later[1:] or not _ahead(data, origin, config.evaluation.horizon):
                raise ConfigError(f"evaluation.origins: with a domain panel each origin must be the first year of a period "
                                  f"from {later[1]} with a period starting within evaluation.horizon="
                                  f"{config.evaluation.horizon} years after it (periods: {list(data.periods)}), got {origin}")


def _ahead(data: DomainDataset, origin: int, horizon: int) -> list[int]:
    """The indices (among the later periods) of the periods starting within `horizon` years after `origin`."""
    return [i for i, start in enumerate(data.periods[1:]) if origin < start <= origin + horizon]


@eqx.filter_jit
def _curvature(free: PanelEstimate, fixed: PanelEstimate, data: DomainDataset, prior: Prior):
    flat, unravel = ravel_pytree(free)

    def at(x):
        return eqx.combine(unravel(x), fixed)

    def posterior(x):
        estimate = at(x)
        return negative_log_likelihood(estimate, data) + negative_log_prior(estimate, prior)

    def natural(x):
        return free_natural(at(x), free)

    return flat, jax.hessian(posterior)(flat), natural(flat), jax.jacfwd(natural)(flat)


def _names(free: PanelEstimate) -> list[str]:
    """The name of every free entry, in the order of `ravel_pytree(free)`."""
    names = []
    for name in PARAMETERS:
        value = free.params.unconstrained[name]
        if value is not None:
            names += [name] if np.ndim(value) == 0 else [f"{name}[{i}]" for i in range(np.size(value))]
    if free.effects.attraction is not None:
        rows, columns = np.shape(free.effects.attraction)
        names += [f"attraction[{r},{k}]" for r in range(rows) for k in range(columns)]
    if free.effects.year is not None:
        names += [f"national_innovation[{t + 1}]" for t in range(np.size(free.effects.year))]
    return names + [name for name in NOISE if getattr(free.noise, name) is not None]


def laplace(estimate: PanelEstimate, data: DomainDataset, prior: Prior, mask: PanelEstimate) -> tuple[Laplace, pd.DataFrame]:
    """The Laplace approximation at `estimate` from the exact Hessian of the negative log
    posterior (without the curvature term) over every free entry, dense: a few hundred entries at
    most. NaN covariance and errors where it is not positive definite. Also the noise
    parameters' values and delta-method errors."""
    free, fixed = eqx.partition(estimate, mask)
    flat, hessian, natural, jacobian = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=float),
                                                              _curvature(free, fixed, data, prior))
    hessian = 0.5 * (hessian + hessian.T)
    positive = bool(np.all(np.isfinite(hessian))) and bool(np.all(np.linalg.eigvalsh(hessian) > 0))
    covariance = np.linalg.inv(hessian) if positive else np.full_like(hessian, np.nan)
    se = np.sqrt(np.clip(np.diag(jacobian @ covariance @ jacobian.T), 0, None))
    names = _names(free)
    approx = Laplace(names, flat, covariance, natural, se, positive, [], np.zeros((data.num_regions, 0)),
                     np.zeros((data.num_regions, 0, 0)), np.zeros((len(names), data.num_regions, 0)))
    noise_rows = []
    for name in NOISE:
        i = names.index(name)
        value = float(np.exp(flat[i]))
        noise_rows.append(dict(parameter=name, value=value, se=value * float(np.sqrt(max(covariance[i, i], 0.0)))
                               if positive else float("nan"), meaning=NOISE[name][1]))
    return approx, pd.DataFrame(noise_rows)


def calibrate_panel(data: DomainDataset, config: CalibrateConfig, *, optimizer: optax.GradientTransformation | None = None,
                    checkpoint: Path | None = None, phase: str = "") -> PanelCalibration:
    """The metros' recipe on a panel: `fit.restarts` starts as one batch, an L-BFGS polish of the
    best (`calibrate.polish` with `PANEL`), and the Laplace approximation. `checkpoint`: a stem
    for the fits' checkpoints (resumed)."""
    check_panel(data, config)
    fit_config = config.fit
    prior = calibration_prior(config)
    start = PanelEstimate.start(prior.centre, data)
    restarts = fit(objective, start, (data, prior), optimizer or adam_with_warmup(fit_config.steps), fit_config,
                   phase=f"{phase}restarts", checkpoint_path=checkpoint, mask=panel_mask(start, fit_config))
    best, polished = restarts.estimate, None
    if fit_config.polish_steps:
        polished = polish(best, data, prior, fit_config, phase=f"{phase}polish", problem=PANEL,
                          checkpoint=None if checkpoint is None else Path(f"{checkpoint}_polish"))
        best = polished.estimate
    started = time.perf_counter()
    approx, noise = laplace(best, data, prior, panel_mask(best, fit_config))
    log.info("%sLaplace approximation: done in %.1f s; positive definite: %s", phase, time.perf_counter() - started,
             approx.positive_definite)
    return PanelCalibration(config, best, approx, noise, restarts, polished)


def draw_estimates(calibration: PanelCalibration, *, key: jax.Array, num: int) -> PanelEstimate:
    """`num` draws of the estimate from its Laplace approximation, stacked (every draw the estimate
    where that is not positive definite)."""
    approx = calibration.laplace
    draws = np.broadcast_to(approx.mean, (num, approx.mean.size)).copy()
    if approx.positive_definite:
        draws += np.asarray(jax.random.multivariate_normal(key, jnp.zeros(approx.mean.size), jnp.asarray(approx.covariance),
                                                           shape=(num,), method="eigh"))
    return stack_draws(calibration.estimate, panel_mask(calibration.estimate, calibration.config.fit), draws)


# --------------------------------------------------------------------------------------------
# Forecasts from an origin, and the rolling origin
# --------------------------------------------------------------------------------------------


def forecast_inventors(estimate: PanelEstimate, data: DomainDataset, origin: int, ahead: tuple[int, ...]) -> Array:
    """Expected inventors (H, R, K) in the later periods `ahead` (indices), from the period
    `origin` (an index). The model runs to the origin's year; there its community is set to the
    inventors observed (where observed) and its knowledge to the state's patents (the observation
    model inverted, at the year's national effect, as `simulate.restart_knowledge`); it runs on
    with every driver held at the origin's values (later drivers are not known at the origin), so
    a community observed away from the level its fitted attraction sustains moves back toward it.
    The national effect follows its path ahead (`effects.national_effects`; the innovations of
    years after the fitted ones are the prior's, zero at the estimate)."""
    params, p = estimate.params, estimate.params.natural()
    at = data.observed_at[origin]
    state, yearly = initial_state(params, data, estimate.effects.attraction)
    head = make_forcing(at + 1, data.num_regions, drivers=_years(yearly, slice(0, at + 1)))
    state, traj = simulate(params, state, data.drivers, data.graph, head, record_states=False)
    eta = national_effects(p, estimate.effects.year)
    observed = data.inventors_mask[origin] > 0
    active = jnp.where(observed, data.inventors[origin] / (INVENTORS_PER_MEMBER * jnp.exp(eta[at])), state.regions.active)
    state = eqx.tree_at(lambda s: s.regions.active, state, active)
    factor = national_factor(p, traj.observations.patents, knowledge_from_patents(p, data.first_patents), eta[: at + 1])[at]
    counts = jnp.where(data.patents_mask[origin] > 0, data.patents[origin], jnp.nan)
    state = restart_knowledge(params, state, counts, factor)
    years = data.observed_at[ahead[-1]] - at
    held = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x[at], (years, *x.shape[1:])), yearly)
    _, tail = simulate(params, state, data.drivers, data.graph, make_forcing(years, data.num_regions, drivers=held))
    rows = jnp.asarray([data.observed_at[i] for i in ahead])
    return INVENTORS_PER_MEMBER * tail.regions.active[rows - at - 1] * jnp.exp(eta[rows])[:, None, None]


@eqx.filter_jit
def _predictive(draws: PanelEstimate, data: DomainDataset, origin: int, ahead: tuple[int, ...], key: jax.Array):
    """Expected inventors under each parameter draw, and counts drawn around them."""
    means = eqx.filter_vmap(lambda e: forecast_inventors(e, data, origin, ahead))(draws)
    dispersion = jnp.exp(draws.noise.inventors_dispersion)[:, None, None, None]
    return means, sample_counts(key, means, dispersion)


PANEL_METHODS = ("model", "persistence", "national drift")


def evaluate_panel(data: DomainDataset, config: CalibrateConfig, *, optimizer: optax.GradientTransformation | None = None,
                   checkpoint: Path | None = None) -> pd.DataFrame:
    """At each origin (a period's first year) calibrate on the periods up to it, forecast the
    inventors of every state and field in the periods starting within `evaluation.horizon` years,
    and score the model, persistence and national drift (`baselines.py`, on the periods after the
    first, equally spaced) with `evaluation.scores`, over the cells observed at the origin and at
    the target (a cell empty at the origin has no persistence forecast). The baselines' intervals
    come from their own pseudo-forecast errors, as on the metros.

    **Returns:** one row per origin and method: origin, method, cells, and the `evaluation.METRICS`.
    """
    from .evaluation import scores  # the metros' scores; evaluation imports the metro recipe

    e = config.evaluation
    check_panel(data, config)
    observed = data.observed_inventors().reshape(len(data.periods) - 1, -1)  # (P, R K)
    rows = []
    for origin in sorted(e.origins):
        began = time.perf_counter()
        o, ahead = data.period_index(origin), tuple(_ahead(data, origin, e.horizon))
        stem = None if checkpoint is None else Path(f"{checkpoint}_{origin}")
        fitted = calibrate_panel(data.through(origin), config, optimizer=optimizer, checkpoint=stem, phase=f"origin {origin}: ")
        truth = np.where(np.isfinite(observed[o])[None], observed[list(ahead)], np.nan)
        draws = draw_estimates(fitted, key=jax.random.key(config.fit.seed + origin), num=e.draws)
        means, counts = _predictive(draws, data, o, ahead, jax.random.key(origin))
        probabilities = sorted({round(q, 9) for c in INTERVALS for q in ((1 - c) / 2, (1 + c) / 2)})
        model_quantiles = np.quantile(np.asarray(counts).reshape(e.draws, len(ahead), -1), probabilities, axis=0)
        central = np.asarray(forecast_inventors(fitted.estimate, data, o, ahead)).reshape(len(ahead), -1)
        cells = int(np.isfinite(truth).sum())
        rows.append(dict(origin=origin, method="model", cells=cells,
                         **scores(truth, central, dict(zip(probabilities, model_quantiles)))))
        history = observed[: o + 1]
        for name, method in (("persistence", persistence), ("national drift", national_drift)):
            mean = method(history, len(ahead))
            quantiles = predictive_quantiles(mean, horizon_dispersion(method, history, len(ahead)), probabilities,
                                             jax.random.key(origin))
            rows.append(dict(origin=origin, method=name, cells=cells, **scores(truth, mean, quantiles)))
        best = min(r["male"] for r in rows[-2:])
        log.info("origin %d: inventors %d periods ahead, model MALE %.4f (best baseline %.4f), 90%% coverage %.3f (%.0f s)",
                 origin, len(ahead), rows[-3]["male"], best, rows[-3]["coverage_90"], time.perf_counter() - began)
    return pd.DataFrame(rows)


def fitted_inventors(estimate: PanelEstimate, data: DomainDataset) -> np.ndarray:
    """The model's expected inventors of every later period (P, R, K), for reports."""
    return np.asarray(eqx.filter_jit(expected)(estimate, data).inventors)


# --------------------------------------------------------------------------------------------
# A panel calibration on disk
# --------------------------------------------------------------------------------------------

KIND = "domain_panel"  # `calibration.json`'s `kind`: `calibrate.load_calibration` refuses such a run


def save_panel_calibration(calibration: PanelCalibration, folder: Path) -> None:
    """Write the configuration (`calibration.json`) and the estimate (`fitted.eqx`) into `folder`."""
    estimate = calibration.estimate
    precision = str(jax.tree_util.tree_leaves(estimate)[0].dtype)
    write_json(Path(folder) / "calibration.json", dict(format=2, kind=KIND, precision=precision,
                                                       config=dataclasses.asdict(calibration.config)))
    with atomic_path(Path(folder) / "fitted.eqx") as tmp:
        eqx.tree_serialise_leaves(tmp, estimate)
