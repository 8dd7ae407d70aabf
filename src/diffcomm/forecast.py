"""Forecasts with uncertainty, honest baselines, and forecast scores.

A forecast simulates from the data's first year through the last forecast year for parameter
draws from the Laplace approximation (one `vmap`-ped ensemble), then draws counts from the
negative binomial: the interval holds both parameter and count uncertainty.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .calibrate import Laplace, sample_params
from .loss import CalibrationInputs, knowledge_from_patents, nb_sample, simulate_from_data
from .model import Params
from .simulate import make_forcing, simulate


def restart_knowledge(params: Params, state, counts):
    """The state with knowledge set from observed patent counts (the observation model inverted),
    kept where a count is missing; its split over domains is the simulated one."""
    knowledge = state.regions.knowledge
    level = knowledge_from_patents(params, counts)
    observed = jnp.isfinite(counts)
    share = knowledge / jnp.sum(knowledge, axis=-1, keepdims=True)
    new = jnp.where(observed[:, None], jnp.where(observed, level, 1.0)[:, None] * share, knowledge)
    return eqx.tree_at(lambda s: s.regions.knowledge, state, new)


def state_at_origin(params: Params, inputs: CalibrationInputs, origin_years: int, origin_counts=None):
    """Simulate `origin_years` years from the data's first year; with `origin_counts` (R,),
    restart knowledge from the counts observed at that origin.

    **Returns:** the state at the origin and the observations of the years up to it (T, R).
    """
    state, observations = simulate_from_data(params, inputs, origin_years)
    if origin_counts is not None:
        state = restart_knowledge(params, state, origin_counts)
    return state, observations


@eqx.filter_jit
def _ensemble_means(draws: Params, inputs: CalibrationInputs, num_years: int, origin_years: int, origin_counts):
    """Patents means for each draw: simulate to the forecast origin, restart knowledge from the
    counts observed there (if any), simulate on; (draws, num_years, R)."""
    num_regions = inputs.first_patents.shape[0]

    def one(params):
        if origin_counts is None or origin_years == num_years:
            patents = simulate_from_data(params, inputs, num_years)[1].patents
            return patents, params.natural().patents_dispersion
        state, observations = state_at_origin(params, inputs, origin_years, origin_counts)
        rest = make_forcing(num_years - origin_years, num_regions)
        _, later = simulate(params, state, inputs.drivers, inputs.graph, rest, record_states=False)
        patents = jnp.concatenate([observations.patents, later.observations.patents])
        return patents, params.natural().patents_dispersion

    return jax.vmap(one)(draws)


def forecast_patents(
    params: Params,
    approx: Laplace,
    free: list[str],
    inputs: CalibrationInputs,
    num_years: int,
    *,
    key: jax.Array,
    draws: int = 200,
    level: float = 0.9,
    origin: int | None = None,
    origin_counts: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Predictive mean and central interval of patents for `num_years` years after the first.

    With `origin` (years after the first) and `origin_counts` (R,), the forecast conditions on
    the counts observed at the origin: knowledge restarts from them, as the baselines use the
    last observation too. Years up to the origin are the model's fit.

    **Returns:** `mean`, `lower`, `upper`, each (num_years, R), and `fitted` (the mean at the
    fitted parameters).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    k_params, k_counts = jax.random.split(key)
    sampled = sample_params(params, free, approx, key=k_params, num=draws)
    if origin is None or origin_counts is None:
        origin, observed = num_years, None
    else:
        observed = jnp.asarray(origin_counts, dtype=float)
    means, dispersion = _ensemble_means(sampled, inputs, num_years, origin, observed)
    draws_of_counts = jax.vmap(nb_sample)(jax.random.split(k_counts, draws), means, dispersion)
    if not bool(jnp.all(jnp.isfinite(means))):
        raise FloatingPointError("the forecast has non-finite values: the fitted parameters leave the model's stable range")
    tail = (1 - level) / 2
    fitted, _ = _ensemble_means(jax.tree_util.tree_map(lambda x: x[None], params), inputs, num_years, origin, observed)
    return dict(
        mean=np.asarray(jnp.mean(means, axis=0)),
        lower=np.asarray(jnp.quantile(draws_of_counts, tail, axis=0)),
        upper=np.asarray(jnp.quantile(draws_of_counts, 1 - tail, axis=0)),
        fitted=np.asarray(fitted[0]),
    )


def persistence(history: np.ndarray, horizon: int) -> np.ndarray:
    """Each region's last observed value, repeated (horizon, R)."""
    last = _last_observed(history)
    return np.repeat(last[None], horizon, axis=0)


def log_linear_trend(history: np.ndarray, horizon: int) -> np.ndarray:
    """Per region, least squares of log(1 + y) on year, extrapolated (horizon, R)."""
    t = np.arange(history.shape[0], dtype=float)
    y = np.log1p(history)
    mask = ~np.isnan(y)
    n = mask.sum(0)
    tm = np.where(mask, t[:, None], 0.0).sum(0) / np.maximum(n, 1)
    ym = np.where(mask, y, 0.0).sum(0) / np.maximum(n, 1)
    dt = np.where(mask, t[:, None] - tm, 0.0)
    slope = (dt * np.where(mask, y - ym, 0.0)).sum(0) / np.maximum((dt**2).sum(0), 1e-12)
    future = np.arange(history.shape[0], history.shape[0] + horizon, dtype=float)
    return np.expm1(ym + slope * (future[:, None] - tm))


def _last_observed(history: np.ndarray) -> np.ndarray:
    filled = history.copy()
    for t in range(1, len(filled)):
        filled[t] = np.where(np.isnan(filled[t]), filled[t - 1], filled[t])
    return filled[-1]


def scores(prediction: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """Forecast errors over observed cells: MAE, mean absolute log error (log1p), RMSE."""
    mask = ~np.isnan(observed)
    err = prediction[mask] - observed[mask]
    log_err = np.log1p(np.clip(prediction[mask], 0, None)) - np.log1p(observed[mask])
    return dict(mae=float(np.mean(np.abs(err))), male=float(np.mean(np.abs(log_err))), rmse=float(np.sqrt(np.mean(err**2))))


def per_region_log_error(prediction: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Mean absolute log1p error per region over the forecast years (R,)."""
    diff = np.abs(np.log1p(np.clip(prediction, 0, None)) - np.log1p(observed))
    with warnings.catch_warnings():  # a region with no observed year has no error: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.where(np.isnan(observed), np.nan, diff), axis=0)
