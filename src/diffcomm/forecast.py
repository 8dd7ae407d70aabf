"""Forecasts of patents with uncertainty from a calibration.

A forecast simulates from the data's first year through the last forecast year for draws of the
estimate (parameters, region effects and national year effects; one `vmap`-ped ensemble) from
the Laplace approximation, or from the NUTS draws where the calibration has them, continues the
national effect past the fitted years with fresh shocks, and draws counts from the negative
binomial: the interval holds parameter, latent-effect, national and count uncertainty. Forecasts
condition on the counts observed up to their origin: each region's level filtered from them
(`filtering.py`) moves as the model's path moves after the origin, and the counts' dispersion
around it in each year ahead is the one the forecast's own errors at earlier origins inside the
history say (`_count_dispersion`), as the baselines' is. A policy starts from the same level,
knowledge restarted there at the year's national effect (`simulate.restart_knowledge`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array

from .baselines import MIN_HISTORY, pseudo_dispersion
from .calibrate import Calibration
from .config import ForecastConfig
from .domains import PanelEstimate, expected, years_of
from .effects import Estimate, national_effects
from .errors import ConfigError
from .filtering import MIN_YEARS, Level, filter_level
from .inputs import Drivers
from .laplace import Laplace, draw_estimates
from .loss import conditioned_path, observed_counts
from .observation import count_quantiles, knowledge_growth, national_factor
from .simulate import (
    first_knowledge,
    region_drivers,
    restart_knowledge,
    simulate_from_data,
)
from .state import State

if TYPE_CHECKING:
    from .data import Dataset
    from .data.panel import DomainDataset

MAX_HORIZON = 50  # years after the data that a forecast may reach
INTERVALS = (0.5, 0.9)  # central intervals every forecast also reports (for interval scores and coverage)


def interval_probabilities(*levels: float) -> list[float]:
    """The lower and upper probabilities of the central intervals `levels`, sorted, rounded so that
    a key like 0.05 is found again."""
    return sorted({round(p, 9) for c in levels for p in ((1 - c) / 2, (1 + c) / 2)})


def _innovations(estimate: Estimate, num_years: int, key: jax.Array | None, spread=1.0) -> jax.Array:
    """The national innovations of `num_years` years: the fitted ones, then fresh N(0, spread^2)
    draws (zeros with `key=None`: the central path)."""
    fitted = estimate.effects.year[:num_years]
    extra = num_years - fitted.shape[0]
    if extra <= 0:
        return fitted
    later = jnp.zeros(extra, fitted.dtype) if key is None else spread * jax.random.normal(key, (extra,), fitted.dtype)
    return jnp.concatenate([fitted, later])


def expected_path(estimate: Estimate, data: Dataset, num_years: int, origin_years: int, origin_counts, key=None,
                  spread=1.0) -> jax.Array:
    """Expected patents (num_years, R) of one estimate, national effects applied, with fresh
    shocks after the fitted years drawn with `key` (none with `key=None`) at `spread`: the
    model's path; with `data.one_step_ahead`, each year restarted from the year before's count as
    the fit does, up to the origin (`origin_years`, from `origin_counts` there where given).
    """
    params = estimate.params
    p = params.natural()
    eta = national_effects(p, _innovations(estimate, num_years, key, spread))
    if data.one_step_ahead:
        return conditioned_path(estimate, data, _restart_counts(data, num_years, origin_years, origin_counts), eta)[3]
    own = simulate_from_data(params, data, num_years, effects=estimate.effects)[1].patents
    return own * jnp.exp(national_factor(p, own, first_knowledge(params, data), eta))[:, None]


def _restart_counts(data: Dataset, num_years: int, origin_years: int, origin_counts) -> jax.Array:
    """With `data.one_step_ahead`, the counts knowledge restarts from in each of `num_years`
    years (NaN: none): the data's up to the origin, `origin_counts` (where given) at the origin,
    none after it (`loss.conditioned_path`)."""
    counts = observed_counts(data)[:origin_years]  # fewer rows where the years run past the data
    if origin_counts is not None:
        counts = counts.at[origin_years - 1].set(origin_counts)
    return jnp.concatenate([counts, jnp.full((num_years - counts.shape[0], data.num_regions), jnp.nan, counts.dtype)])


def _restarted(estimate: Estimate, data: Dataset, origin_years: int, origin_counts, eta) -> tuple[State, jax.Array, jax.Array]:
    """Simulate `origin_years` years and restart knowledge from `origin_counts`, read at the
    origin's national factor. **Returns:** the restarted state, the expected patents up to the
    origin with their national factor (origin_years, R), and the knowledge growth at the origin."""
    params, p = estimate.params, estimate.params.natural()
    if data.one_step_ahead:  # every year restarted, the origin's from `origin_counts`
        counts = _restart_counts(data, origin_years, origin_years, origin_counts)
        state, growth, _, before, _ = conditioned_path(estimate, data, counts, eta[:origin_years])
        return state, before, growth
    state, before = simulate_from_data(params, data, origin_years, effects=estimate.effects)
    growth = knowledge_growth(p, before.patents, first_knowledge(params, data))
    factor = eta[:origin_years] - p.patents_knowledge_elasticity * growth
    state = restart_knowledge(params, state, origin_counts, factor[-1])
    return state, before.patents * jnp.exp(factor)[:, None], growth[-1]


@eqx.filter_jit
def _ensemble_means(ensemble: Estimate, data: Dataset, num_years: int, origin_years: int, origin_counts, key: jax.Array):
    """Expected patents of every member (S, num_years, R), the first one (the estimate) with no
    future national shock, and each member's dispersion (S,). `origin_counts`: (S, R) or None."""
    keys = jax.random.split(key, jax.tree_util.tree_leaves(ensemble)[0].shape[0])

    def one(estimate, k, spread, counts):
        return expected_path(estimate, data, num_years, origin_years, counts, k, spread), \
            estimate.params.natural().patents_dispersion

    spread = (jnp.arange(keys.shape[0]) > 0).astype(float)  # the central member has no future shock
    return jax.vmap(one, in_axes=(0, 0, 0, None if origin_counts is None else 0))(ensemble, keys, spread, origin_counts)


def origin_level(estimate: Estimate, data: Dataset, history: np.ndarray) -> tuple[Level, np.ndarray]:
    """The regions' filtered levels at the origin (`filtering.py`) around the estimate's path,
    from the counts `history` (O, R) of the years up to the origin (NaN where not observed), and
    that path (O, R), along which `Level.counts` reads the levels."""
    expected = np.asarray(expected_path(estimate, data, history.shape[0], history.shape[0], None))
    return filter_level(history, expected), expected


def forecast_patents(
    estimate: Estimate,
    approx: Laplace,
    mask: Estimate,
    data: Dataset,
    num_years: int,
    *,
    key: jax.Array,
    draws: int,
    level: float,
    history: np.ndarray | None = None,
    posterior: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Predictive mean and central intervals of patents for `num_years` years after the first.

    With `history`, the counts (O, R) observed in the O years after the first up to an origin,
    the forecast conditions on them: each region's level filtered from its counts
    (`origin_level`) moves as each draw's path moves after the origin, with the share of the
    path's regional change the filter fitted (`filtering.py`), and the deviation from the path
    goes on as a random walk, and counts are drawn around it with the dispersion per year ahead
    that fits the forecast's own errors at earlier origins (`_count_dispersion`; the fitted
    dispersion where the history has no such origin). With `data.one_step_ahead`, knowledge
    restarts from the origin's counts themselves, as the fit restarted it every year, and counts
    keep the fitted dispersion. Years up to the origin are the model's fit. The quantiles are
    those of `observation.COUNT_DRAWS` counts a cell, spread evenly over the draws, as the baselines'.

    **Arguments:** the estimate, its Laplace approximation and the mask of what was fitted
    (`Calibration.mask`); the data; `draws` from the approximation, or from `posterior` (N, D),
    NUTS draws of the free entries (`Calibration.posterior`), where given; `level` of the main interval.

    **Returns:** `mean`, `lower`, `upper`, each (num_years, R); `fitted` (the mean at the
    estimate with no future shock); `total_lower`, `total_upper` (num_years,): the interval of
    the sum over regions (not the sum of the regions' bounds); `quantiles` {probability:
    (num_years, R)} for the central intervals of `INTERVALS`; and with a history `level` (`Level`)
    and, where it was fitted, `count_dispersion` (num_years - O,).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    k_params, k_national, k_counts, k_level = jax.random.split(key, 4)
    sampled = draw_estimates(estimate, mask, approx, key=k_params, num=draws, posterior=posterior)
    ensemble = jax.tree_util.tree_map(lambda one, many: jnp.concatenate([one[None], many]), estimate, sampled)
    extra = {}
    conditioned = history is not None and history.shape[0] not in (0, num_years)
    if conditioned and data.one_step_ahead:  # as the fit did every year: knowledge restarts from the origin's counts
        counts = jnp.broadcast_to(jnp.asarray(history[-1]), (draws + 1, data.num_regions))
        means, dispersion = _ensemble_means(ensemble, data, num_years, history.shape[0], counts, k_national)
    else:
        means, dispersion = _ensemble_means(ensemble, data, num_years, num_years, None, k_national)
    dispersion = jnp.broadcast_to(dispersion[:, None], means.shape[:2])  # (S, num_years): count dispersion per year
    if conditioned and not data.one_step_ahead:  # the filtered level moved on along each member's path
        extra["level"], moved = _from_level(history, np.asarray(means), k_level)
        means = means.at[:, history.shape[0]:].set(moved)
        ahead = _count_dispersion(history, ensemble, data, num_years, jax.random.fold_in(k_level, 2))  # not split's keys
        if ahead is not None:
            extra["count_dispersion"] = ahead
            dispersion = dispersion.at[:, history.shape[0]:].set(jnp.asarray(ahead, dispersion.dtype))
    if not bool(jnp.all(jnp.isfinite(means))):
        raise FloatingPointError("the forecast has non-finite values: the fitted parameters leave the model's stable range")
    probabilities = interval_probabilities(level, *INTERVALS)
    cells, sums = count_quantiles(np.asarray(means[1:]), np.asarray(dispersion[1:, :, None]), probabilities, k_counts)
    quantiles, totals = dict(zip(probabilities, cells)), dict(zip(probabilities, sums))
    low, high = round((1 - level) / 2, 9), round((1 + level) / 2, 9)
    return dict(mean=np.asarray(jnp.mean(means[1:], axis=0)), lower=quantiles[low], upper=quantiles[high],
                total_lower=totals[low], total_upper=totals[high], fitted=np.asarray(means[0]), quantiles=quantiles,
                **extra)


def _from_level(history: np.ndarray, means: np.ndarray, key: jax.Array) -> tuple[Level, np.ndarray]:
    """The regions' level filtered from the counts `history` (O, R) around the first member's path
    up to the origin, the estimate's (as `origin_level`'s, already simulated), and each member's
    forecast after the origin from it (`_moved_level`), for the years of `means` (S, T, R) after O."""
    filtered = filter_level(history, means[0, :history.shape[0]])
    return filtered, _moved_level(filtered, means, history.shape[0], key)


def _moved_level(filtered: Level, means: np.ndarray, origin: int, key: jax.Array) -> np.ndarray:
    """Each member's forecast after the origin (S, num_years - origin, R): the level at the origin,
    drawn from the filtered deviation's posterior (the first member, the estimate, at the filtered
    level), moved as the member's own path moves (`Level.path`), times a random walk of step `tau`
    (none for the first member)."""
    k_start, k_walk = jax.random.split(key)
    start = np.array(jax.random.normal(k_start, means.shape[:1] + means.shape[2:]))
    steps = np.array(jax.random.normal(k_walk, (means.shape[0], means.shape[1] - origin, means.shape[2])))
    start[0], steps[0] = 0.0, 0.0
    level = filtered.counts(means[0, :origin], start)  # along the estimate's path, as it was filtered
    path = filtered.path(means)
    ahead = (path[:, origin:] + 0.5) / (path[:, origin - 1:origin] + 0.5)
    return np.maximum((level[:, None] + 0.5) * ahead * np.exp(filtered.tau * np.cumsum(steps, axis=1)) - 0.5, 0.0)


def _count_dispersion(history: np.ndarray, ensemble: Estimate, data: Dataset, num_years: int, key: jax.Array
                      ) -> np.ndarray | None:
    """The counts' dispersion around the moved level for each year after the origin (H,), where
    the O years of `history` end and `num_years` = O + H: the one under which the forecast's own
    pseudo-forecasts are most likely (`baselines.pseudo_dispersion`), as the baselines' is. From
    each earlier origin inside the history with `MIN_HISTORY` years before it, each member of
    `ensemble` is simulated with its national innovations after that origin drawn afresh, as the
    forecast draws them (`_fresh_after`), the level filtered from the counts up to there is moved
    along each path (`_moved_level`), and the counts that followed are scored. The members' other
    parameters and region effects are the fit's through the origin, which has seen the years they
    forecast. None without such an origin."""
    origin, horizon = history.shape[0], num_years - history.shape[0]
    k_effects, k_national, k_level = jax.random.split(key, 3)

    def pseudo():
        for cut in range(MIN_HISTORY, origin):
            n = min(horizon, origin - cut)
            members = _fresh_after(ensemble, cut, jax.random.fold_in(k_effects, cut))
            means = np.asarray(_ensemble_means(members, data, num_years, num_years, None, k_national)[0])
            moved = _from_level(history[:cut], means[:, :cut + n], jax.random.fold_in(k_level, cut))[1]
            yield moved[1:], history[cut:cut + n]

    return pseudo_dispersion(pseudo(), horizon)


def _fresh_after(ensemble: Estimate, years: int, key: jax.Array) -> Estimate:
    """The ensemble (leading axis S) with its national innovations after the first `years` drawn
    afresh, N(0, 1), as a forecast from there draws them; none for the first member, the estimate."""
    fitted = ensemble.effects.year
    fresh = jax.random.normal(key, fitted.shape, fitted.dtype).at[0].set(0.0)
    return eqx.tree_at(lambda e: e.effects.year, ensemble, jnp.where(jnp.arange(fitted.shape[1]) >= years, fresh, fitted))


def calibrated_regions(calibration: Calibration, data: Dataset, draws: Estimate | None = None, *,
                       with_factor: bool = False) -> tuple:
    """The calibrated regions in the data's last year, as a policy starts from them: the state the
    model reaches with the fitted effects, knowledge restarted from each region's filtered level
    (from its last count with `data.one_step_ahead`; as a forecast from there would), and the
    drivers with the latent region effects added.
    **Returns:** `(state, drivers, graph)`, and with `with_factor` also the log factor that turns
    the model's expected patents into counts at the last year's national level (`_restarted`).

    `draws`: a stacked `Estimate` (leading axis S, e.g. `laplace.draw_estimates`): the regions
    under each draw instead, state, drivers and factor with a leading axis S; every draw restarts
    from the same filtered level (read at the estimate), each along its own path and national factor.
    """
    estimate, observed = calibration.estimate, data.observed_patents()
    years = observed.shape[0]
    if data.one_step_ahead:  # the fit restarted every year from the counts; the last year's are the origin's
        counts = jnp.asarray(observed[-1])
    else:
        filtered, expected = origin_level(estimate, data, observed)
        counts = jnp.asarray(filtered.counts(expected))

    def at_origin(one: Estimate) -> tuple[State, Drivers, jax.Array]:
        p = one.params.natural()
        eta = national_effects(p, _innovations(one, years, None))
        state, _, growth = _restarted(one, data, years, counts, eta)
        return state, region_drivers(one.params, data, one.effects), eta[years - 1] - p.patents_knowledge_elasticity * growth

    state, drivers, factor = at_origin(estimate) if draws is None else eqx.filter_jit(jax.vmap(at_origin))(draws)
    return (state, drivers, data.graph, factor) if with_factor else (state, drivers, data.graph)


@dataclass
class Forecast:
    """Patents from the data's second year through `years[-1]`, each array (T, R); the years
    from `first_year` on are the ones asked for."""

    codes: tuple[str, ...]
    names: tuple[str, ...]
    years: np.ndarray  # (T,)
    first_year: int
    origin_year: int  # the last observed year the forecast conditions on
    observed: np.ndarray  # NaN outside the data
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    total: tuple[np.ndarray, np.ndarray]  # the interval of the sum over regions, (T,) each
    level: Level | None = None  # the regions' filtered level at the origin, where the forecast moves it on
    count_dispersion: np.ndarray | None = None  # (years after the origin,) of the counts around the moved level

    def table(self) -> pd.DataFrame:
        """One row per region and asked year: `region, year, mean, lower, upper`."""
        wanted = self.years >= self.first_year
        count = int(wanted.sum())
        return pd.DataFrame({
            "region": np.repeat(np.asarray(self.codes)[None], count, axis=0).ravel(),
            "year": np.repeat(self.years[wanted], len(self.codes)),
            "mean": self.mean[wanted].ravel(),
            "lower": self.lower[wanted].ravel(),
            "upper": self.upper[wanted].ravel(),
        })


def forecast(calibration: Calibration, data: Dataset, first_year: int, last_year: int, *, draws: int = ForecastConfig.draws,
             level: float = ForecastConfig.level, key: jax.Array | None = None) -> Forecast:
    """Forecast patents for `first_year`..`last_year` from a calibration.

    The forecast conditions on the last observed year before `first_year`: years inside the
    data give one-step-ahead and longer forecasts from there (fitted values with intervals). Such
    a forecast follows the national effects the calibration fitted to those years, while the
    count noise is sized by pseudo-forecasts that draw theirs afresh (`_count_dispersion`), so
    its count noise is sized for a forecast that did not know the national level, not for it.
    Raises `ConfigError` for years the data or the horizon (`MAX_HORIZON`) do not allow, and for a
    first year with one observed year before it (too few to read the regions' levels from).
    """
    start, end = data.years[0], data.years[-1]
    if not start < first_year <= last_year <= end + MAX_HORIZON:
        raise ConfigError(f"years must lie in {start + 1}-{end + MAX_HORIZON} (after the data's first year, and at most "
                          f"{MAX_HORIZON} years after its last), first to last; got {first_year}-{last_year}")
    origin = min(end, first_year - 1) - start  # years after the first
    if 0 < origin < MIN_YEARS and not data.one_step_ahead:  # one_step_ahead restarts from the count, no filter
        raise ConfigError(f"years: a forecast reads each region's level from two observed years at least before the first "
                          f"year asked; start in {start + 1} (the fitted path, no counts) or from {start + 1 + MIN_YEARS}, "
                          f"got {first_year}")
    observed = data.observed_patents()
    band = forecast_patents(calibration.estimate, calibration.laplace, calibration.mask, data, last_year - start,
                            key=jax.random.key(0) if key is None else key, draws=draws, level=level,
                            history=observed[:origin], posterior=calibration.posterior)
    years = np.arange(start + 1, last_year + 1)
    shown = np.full((len(years), data.num_regions), np.nan)
    shown[: min(len(years), len(observed))] = observed[: len(years)]
    return Forecast(data.codes, data.names, years, first_year, start + origin, shown, band["mean"], band["lower"],
                    band["upper"], (band["total_lower"], band["total_upper"]), band.get("level"), band.get("count_dispersion"))


# --------------------------------------------------------------------------------------------
# Inventors on a state x domain panel (`domains.py`)
# --------------------------------------------------------------------------------------------


@eqx.filter_jit
def forecast_inventors(estimate: PanelEstimate, data: DomainDataset, origin: int, ahead: tuple[int, ...]) -> Array:
    """Expected inventors (H, R, K) in the later periods `ahead` (indices) from the period `origin`
    (an index), as the fit expects every period (`domains.expected`): the community is set to the
    inventors observed at each period up to the origin, and from the origin the model runs free,
    with every driver held at the origin's values (later drivers are not known at the origin). The
    national effect follows its path ahead (`effects.national_effects`; the innovations of years
    after the fitted ones are the prior's, zero at the estimate)."""
    rows = jnp.minimum(jnp.arange(data.num_years), data.observed_at[origin])
    held = eqx.tree_at(lambda d: d.yearly, data.through(data.periods[origin + 1]), years_of(data.yearly, rows))
    return expected(estimate, held).inventors[jnp.asarray(ahead)]


@eqx.filter_jit
def predictive_inventors(draws: PanelEstimate, data: DomainDataset, origin: int, ahead: tuple[int, ...]):
    """Expected inventors under each parameter draw (D, A, R, K) and each draw's count dispersion
    (D,), the negative binomial mixture whose quantiles `observation.count_quantiles` reads."""
    means = eqx.filter_vmap(lambda e: forecast_inventors(e, data, origin, ahead))(draws)
    return means, jnp.exp(draws.noise.inventors_dispersion)
