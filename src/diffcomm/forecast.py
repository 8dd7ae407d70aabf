"""Forecasts with uncertainty, honest baselines, scores, and the rolling-origin test.

A forecast simulates from the data's first year through the last forecast year for parameter
draws from the Laplace approximation (one `vmap`-ped ensemble), then draws counts from the
negative binomial: the interval holds both parameter and count uncertainty. Forecasts condition
on the counts observed at their origin (knowledge restarts from them), as the baselines do.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from .calibrate import Calibration, Laplace, calibrate, sample_params
from .config import CalibrateConfig, ForecastConfig
from .errors import ConfigError
from .observation import sample_counts
from .params import Params
from .simulate import make_forcing, simulate, simulate_from_data, state_at_origin

if TYPE_CHECKING:
    from .data import Dataset

MAX_HORIZON = 50  # years after the data that a forecast may reach


@eqx.filter_jit
def _ensemble_means(draws: Params, data: Dataset, num_years: int, origin_years: int, origin_counts):
    """Expected patents of each draw, (S, num_years, R), and its dispersion (S,): simulate to the
    origin, restart knowledge from the counts observed there (if any), simulate on."""

    def one(params):
        if origin_counts is None or origin_years == num_years:
            patents = simulate_from_data(params, data, num_years)[1].patents
        else:
            state, observations = state_at_origin(params, data, origin_years, origin_counts)
            rest = make_forcing(num_years - origin_years, data.num_regions)
            _, later = simulate(params, state, data.drivers, data.graph, rest, record_states=False)
            patents = jnp.concatenate([observations.patents, later.observations.patents])
        return patents, params.natural().patents_dispersion

    return jax.vmap(one)(draws)


def forecast_patents(
    params: Params,
    approx: Laplace,
    free: list[str],
    data: Dataset,
    num_years: int,
    *,
    key: jax.Array,
    draws: int,
    level: float,
    origin: int | None = None,
    origin_counts: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Predictive mean and central interval of patents for `num_years` years after the first.

    With `origin` (years after the first) and `origin_counts` (R,), the forecast conditions on
    the counts observed at the origin: knowledge restarts from them, as the baselines use the
    last observation too. Years up to the origin are the model's fit.

    **Returns:** `mean`, `lower`, `upper`, each (num_years, R), `fitted` (the mean at the
    estimate `params`), and `total_lower`, `total_upper` (num_years,): the interval of the sum over
    regions (not the sum of the regions' bounds).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    k_params, k_counts = jax.random.split(key)
    sampled = sample_params(params, free, approx, key=k_params, num=draws)
    ensemble = jax.tree_util.tree_map(lambda one, many: jnp.concatenate([one[None], many]), params, sampled)
    if origin is None or origin_counts is None:
        origin, observed = num_years, None
    else:
        observed = jnp.asarray(origin_counts, dtype=float)
    means, dispersion = _ensemble_means(ensemble, data, num_years, origin, observed)
    if not bool(jnp.all(jnp.isfinite(means))):
        raise FloatingPointError("the forecast has non-finite values: the fitted parameters leave the model's stable range")
    band = _predictive_band(means[1:], dispersion[1:], k_counts, (1 - level) / 2)
    return {name: np.asarray(value) for name, value in band.items()} | dict(fitted=np.asarray(means[0]))


@eqx.filter_jit
def _predictive_band(means, dispersion, key, tail: float) -> dict[str, jax.Array]:
    """Mean over the draws' means, and central quantiles of counts drawn around each draw's mean."""
    counts = jax.vmap(sample_counts)(jax.random.split(key, means.shape[0]), means, dispersion)
    totals = jnp.sum(counts, axis=-1)
    return dict(mean=jnp.mean(means, axis=0), lower=jnp.quantile(counts, tail, axis=0),
                upper=jnp.quantile(counts, 1 - tail, axis=0), total_lower=jnp.quantile(totals, tail, axis=0),
                total_upper=jnp.quantile(totals, 1 - tail, axis=0))


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
    data give one-step-ahead and longer forecasts from there (fitted values with intervals).
    Raises `ConfigError` for years the data or the horizon (`MAX_HORIZON`) do not allow.
    """
    start, end = data.years[0], data.years[-1]
    if not start < first_year <= last_year <= end + MAX_HORIZON:
        raise ConfigError(f"years must lie in {start + 1}-{end + MAX_HORIZON} (after the data's first year, and at most "
                          f"{MAX_HORIZON} years after its last), first to last; got {first_year}-{last_year}")
    observed = data.observed_patents()
    origin = min(end, first_year - 1) - start  # years after the first
    band = forecast_patents(calibration.params, calibration.laplace, calibration.config.fit.free, data, last_year - start,
                            key=jax.random.key(0) if key is None else key, draws=draws, level=level, origin=origin,
                            origin_counts=observed[origin - 1] if origin >= 1 else None)
    years = np.arange(start + 1, last_year + 1)
    shown = np.full((len(years), data.num_regions), np.nan)
    shown[: min(len(years), len(observed))] = observed[: len(years)]
    return Forecast(data.codes, data.names, years, first_year, start + origin, shown, band["mean"], band["lower"],
                    band["upper"], (band["total_lower"], band["total_upper"]))


# --------------------------------------------------------------------------------------------
# Baselines and scores
# --------------------------------------------------------------------------------------------


def persistence(history: np.ndarray, horizon: int) -> np.ndarray:
    """Each region's last observed value, repeated (horizon, R)."""
    filled = history.copy()
    for t in range(1, len(filled)):
        filled[t] = np.where(np.isnan(filled[t]), filled[t - 1], filled[t])
    return np.repeat(filled[-1][None], horizon, axis=0)


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


def scores(prediction: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """Forecast errors over observed cells: MAE, mean absolute log error (log1p), RMSE."""
    mask = ~np.isnan(observed)
    err = prediction[mask] - observed[mask]
    log_err = np.log1p(np.clip(prediction[mask], 0, None)) - np.log1p(observed[mask])
    return dict(mae=float(np.mean(np.abs(err))), mean_abs_log_error=float(np.mean(np.abs(log_err))),
                rmse=float(np.sqrt(np.mean(err**2))))


def per_region_log_error(prediction: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Mean absolute log1p error per region over the forecast years (R,)."""
    diff = np.abs(np.log1p(np.clip(prediction, 0, None)) - np.log1p(observed))
    with warnings.catch_warnings():  # a region with no observed year has no error: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.where(np.isnan(observed), np.nan, diff), axis=0)


# --------------------------------------------------------------------------------------------
# The rolling-origin test
# --------------------------------------------------------------------------------------------


@dataclass
class RollingOrigin:
    """A fit through `train_last_year` and its forecast of the later years, with baselines."""

    train_last_year: int
    test_years: np.ndarray  # (H,)
    observed: np.ndarray  # every year after the first (T, R), NaN where not observed
    band: dict[str, np.ndarray]  # the model's mean, lower, upper over all T years
    predictions: dict[str, np.ndarray]  # method -> (H, R) over the test years

    @property
    def truth(self) -> np.ndarray:
        return self.observed[-len(self.test_years):]

    def scores(self) -> dict[str, dict[str, float]]:
        return {name: scores(pred, self.truth) for name, pred in self.predictions.items()}

    def summary(self, codes: tuple[str, ...], names: tuple[str, ...], first_year: int) -> dict:
        """Scores, interval coverage, and where the model does worse than the better baseline."""
        horizon = len(self.test_years)
        inside = (self.truth >= self.band["lower"][-horizon:]) & (self.truth <= self.band["upper"][-horizon:])
        errors = {name: per_region_log_error(pred, self.truth) for name, pred in self.predictions.items()}
        excess = errors["model"] - np.minimum(errors["persistence"], errors["log_linear_trend"])
        worst = np.argsort(-np.nan_to_num(excess, nan=-np.inf))[:10]
        size = np.nanmean(self.truth, axis=0)
        return dict(
            train_years=[first_year, self.train_last_year],
            test_years=[int(self.test_years[0]), int(self.test_years[-1])],
            scores=self.scores(),
            interval_coverage=float(np.nanmean(np.where(np.isnan(self.truth), np.nan, inside))),
            share_of_regions_where_model_is_worse_than_best_baseline=float(np.nanmean(excess > 0)),
            worse_regions=[dict(region=codes[i], name=names[i], excess_log_error=float(excess[i]),
                                mean_patents=float(size[i])) for i in worst],
            mean_patents_where_model_worse=float(np.nanmedian(size[excess > 0])) if (excess > 0).any() else None,
            mean_patents_where_model_better=float(np.nanmedian(size[excess <= 0])) if (excess <= 0).any() else None,
        )

    def table(self, codes: tuple[str, ...], names: tuple[str, ...]) -> pd.DataFrame:
        """One row per region and test year: observed, the model with its interval, each baseline."""
        horizon, regions = len(self.test_years), len(codes)
        columns = {"region": np.tile(codes, horizon), "name": np.tile(names, horizon),
                   "year": np.repeat(self.test_years, regions), "observed": self.truth.ravel(),
                   "model": self.predictions["model"].ravel(), "lower": self.band["lower"][-horizon:].ravel(),
                   "upper": self.band["upper"][-horizon:].ravel()}
        columns.update({name: pred.ravel() for name, pred in self.predictions.items() if name != "model"})
        return pd.DataFrame(columns)


def rolling_origin(
    data: Dataset,
    config: CalibrateConfig,
    *,
    optimizer: optax.GradientTransformation | None = None,
    checkpoint: Path | None = None,
) -> RollingOrigin:
    """Calibrate on the years through `config.evaluation.train_last_year` (the later years held
    out of the same data set, so every compiled program is reused), forecast the later years
    from the last training year's counts, and predict them with two baselines."""
    train_last = config.evaluation.train_last_year
    if not data.years[0] < train_last < data.years[-1]:
        raise ConfigError(f"evaluation.train_last_year must lie strictly inside the data's years {data.years[0]}-"
                          f"{data.years[-1]}, got {train_last}")
    fitted = calibrate(data.through(train_last), config, optimizer=optimizer, checkpoint=checkpoint, phase="rolling origin: ")
    observed = data.observed_patents()
    years = np.asarray(data.years[1:])
    horizon = int(np.sum(years > train_last))
    origin = len(years) - horizon  # years after the first: the last training year
    band = forecast_patents(fitted.params, fitted.laplace, config.fit.free, data, len(years),
                            key=jax.random.key(config.fit.seed + 1), draws=config.evaluation.draws,
                            level=config.evaluation.level, origin=origin, origin_counts=observed[origin - 1])
    history = np.vstack([np.asarray(data.first_patents)[None], observed[:-horizon]])
    predictions = {
        "model": band["mean"][-horizon:],
        "persistence": persistence(history, horizon),
        "log_linear_trend": log_linear_trend(history, horizon),
    }
    return RollingOrigin(train_last, years[-horizon:], observed, band, predictions)
