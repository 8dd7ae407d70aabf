"""The rolling-origin evaluation: the calibrated model against four baselines, out of sample.

At each origin year the model is calibrated on the years up to it (the later ones held out of
the same data set), forecasts the next `horizon` years conditioned on the counts up to the
origin, and is scored against what was observed, as are the baselines (`baselines.py`) fitted
on the same years. Every origin's fit is the whole recipe from cold starts: the objective has
more than one basin (two starts on the metros ended 0.05 apart per observation), and a fit
warm-started from a neighbouring origin's estimate stayed in that estimate's basin. The held-out
years are masked, not removed, so every fit reuses the programs the first one compiled.

Scores, over every region-year observed in the forecast years:

- `male`: mean absolute error of log(1 + count), the scale on which regions of every size count;
- `mae`, `rmse`: on counts, where the largest regions dominate;
- `interval_50`, `interval_90`: the interval score of the central 50% and 90% intervals
  (Gneiting & Raftery 2007, eq. 43), on log(1 + count): the width, plus 2/alpha times the
  distance by which the observation falls outside; lower is better, and it rewards intervals
  that are both narrow and honest;
- `coverage_50`, `coverage_90`: the share of observations inside each interval.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np
import optax
import pandas as pd

from .baselines import baseline_forecast, baselines, national_drift, persistence
from .calibrate import Calibration, calibrate
from .calibrate_domains import calibrate_panel, check_panel, draw_panel_estimates, periods_ahead
from .config import CalibrateConfig
from .effects import national_effects
from .errors import ConfigError
from .forecast import INTERVALS, forecast_inventors, forecast_patents, interval_probabilities, predictive_inventors
from .observation import count_quantiles
from .posterior import sample_posterior
from .sharding import chain_mesh

if TYPE_CHECKING:
    from .data import Dataset
    from .data.panel import DomainDataset

log = logging.getLogger(__name__)

METRICS = ("male", "mae", "rmse", "interval_50", "interval_90", "coverage_50", "coverage_90")
MODEL = "model"
LEVEL_HELD = "model level held (diagnostic)"
"""The model's filtered level at the origin held flat: the model without its dynamics ahead, to
show how much of the forecast error the mechanism's own dynamics add (no intervals)."""
LAPLACE = "model, Laplace draws"
"""With `inference=nuts` the model's forecast draws its parameters from each origin's NUTS draws;
this row is the same fit's forecast from its Laplace approximation, for comparison."""
DIAGNOSTICS = (LEVEL_HELD, LAPLACE)  # rows of the model itself, not baselines


def scores(observed: np.ndarray, mean: np.ndarray, quantiles: dict[float, np.ndarray] | None) -> dict[str, float]:
    """The `METRICS` of a forecast: its mean and its quantiles {probability: array} against the
    observed counts (same shape; NaN cells are skipped). Without quantiles the interval scores
    and coverages are NaN."""
    seen = np.isfinite(observed)
    y, m = observed[seen], mean[seen]
    out = dict(male=float(np.mean(np.abs(np.log1p(m) - np.log1p(y)))), mae=float(np.mean(np.abs(m - y))),
               rmse=float(np.sqrt(np.mean((m - y) ** 2))))
    log_y = np.log1p(y)
    for coverage in INTERVALS:
        if quantiles is None:
            out[f"interval_{round(coverage * 100)}"] = out[f"coverage_{round(coverage * 100)}"] = float("nan")
            continue
        alpha = 1 - coverage
        low = np.log1p(quantiles[round(alpha / 2, 9)][seen])
        high = np.log1p(quantiles[round(1 - alpha / 2, 9)][seen])
        penalty = 2 / alpha * (np.maximum(low - log_y, 0) + np.maximum(log_y - high, 0))
        out[f"interval_{round(coverage * 100)}"] = float(np.mean(high - low + penalty))
        out[f"coverage_{round(coverage * 100)}"] = float(np.mean((log_y >= low) & (log_y <= high)))
    return out


@dataclass
class Evaluation:
    """Scores per origin and method (`table`), and the forecasts that produced them."""

    table: pd.DataFrame  # origin, method, METRICS
    forecasts: dict[int, dict[str, np.ndarray]]  # origin -> method -> mean (horizon, R)
    bands: dict[int, dict[str, np.ndarray]]  # origin -> the model's `forecast_patents` output
    calibrations: dict[int, Calibration]

    def wins(self) -> pd.DataFrame:
        """Per origin: whether the model beats every baseline on MALE and on the 90% interval score."""
        rows = []
        for origin, group in self.table.groupby("origin"):
            model = group[group.method == MODEL].iloc[0]
            others = group[~group.method.isin([MODEL, *DIAGNOSTICS])]
            rows.append(dict(origin=origin, male=bool((model.male < others.male).all()),
                             interval_90=bool((model.interval_90 < others.interval_90).all()),
                             coverage_90_in_85_95=bool(0.85 <= model.coverage_90 <= 0.95)))
        return pd.DataFrame(rows)


def check_origins(data: Dataset, origins: list[int], horizon: int) -> None:
    """Raise `ConfigError` unless each origin leaves at least two fitted years before it and
    `horizon` observed years after it."""
    for origin in origins:
        if not data.years[0] + 2 <= origin <= data.years[-1] - horizon:
            raise ConfigError(f"evaluation.origins: each origin must lie in {data.years[0] + 2}-{data.years[-1] - horizon} "
                              f"(two fitted years before it, evaluation.horizon={horizon} observed years after), got {origin}")


def evaluate(
    data: Dataset,
    config: CalibrateConfig,
    *,
    origins: list[int],
    horizon: int,
    draws: int,
    optimizer: optax.GradientTransformation | None = None,
    checkpoint: Path | None = None,
) -> Evaluation:
    """Calibrate at each origin, forecast `horizon` years, score the model and the baselines.
    `checkpoint`: a stem for each fit's checkpoints (resumed)."""
    check_origins(data, origins, horizon)
    observed = data.observed_patents()
    first = np.asarray(data.first_patents)[None]
    methods = baselines(data.drivers)
    rows, diagnostics, forecasts, bands, calibrations = [], [], {}, {}, {}
    for origin in sorted(origins):
        began = time.perf_counter()
        o = origin - data.years[0]  # fitted years after the first
        stem = None if checkpoint is None else Path(f"{checkpoint}_{origin}")
        fitted = calibrate(data.through(origin), config, optimizer=optimizer, checkpoint=stem, phase=f"origin {origin}: ")
        truth = observed[o:o + horizon]

        def model_forecast(posterior=None):
            return forecast_patents(fitted.estimate, fitted.laplace, fitted.mask, data, o + horizon,
                                    key=jax.random.key(config.fit.seed + origin), draws=draws, level=0.9,
                                    history=observed[:o], posterior=posterior)

        band, laplace_row, held_row = model_forecast(), None, None
        if config.inference == "nuts":  # the NUTS forecast is the model's; the Laplace one a diagnostic
            sampled = sample_posterior(fitted, data.through(origin), config.nuts, progress=config.fit.progress,
                                       checkpoint=None if stem is None else Path(f"{stem}_nuts"),
                                       mesh=chain_mesh(config.nuts.chains, config.chain_devices))
            fitted.posterior = sampled.draws.reshape(-1, sampled.draws.shape[-1])
            laplace_row = dict(origin=origin, method=LAPLACE, **scores(truth, band["mean"][o:],
                                                                       {p: q[o:] for p, q in band["quantiles"].items()}))
            diagnostics.append(laplace_row)
            band = model_forecast(fitted.posterior)
        forecasts[origin], bands[origin] = {MODEL: band["mean"][o:]}, band
        rows.append(dict(origin=origin, method=MODEL, **scores(truth, band["mean"][o:],
                                                               {p: q[o:] for p, q in band["quantiles"].items()})))
        if "level" in band:  # a filtered level (not with `data.one_step_ahead`, which restarts from the counts)
            level = band["level"]
            held = np.repeat(level.counts(band["fitted"][:o])[None], horizon, axis=0)  # no intervals
            forecasts[origin][LEVEL_HELD] = held
            held_row = dict(origin=origin, method=LEVEL_HELD, **scores(truth, held, None))
            diagnostics.append(held_row)
        history = np.vstack([first, observed[:o]])
        probabilities = sorted(band["quantiles"])
        for name, method in methods.items():
            mean, quantiles = baseline_forecast(method, history, horizon, probabilities, jax.random.key(origin))
            forecasts[origin][name] = mean
            rows.append(dict(origin=origin, method=name, **scores(truth, mean, quantiles)))
        calibrations[origin] = fitted
        model = rows[-len(methods) - 1]
        held = "" if held_row is None else (f"; level held {held_row['male']:.4f}; the filter's pass-through "
                                            f"{band['level'].passthrough:.2f}, step {band['level'].tau:.3f}")
        if "count_dispersion" in band:
            held += "; count dispersion ahead " + " / ".join(f"{r:.0f}" for r in band["count_dispersion"])
        log.info("origin %d: model MALE %.4f (best baseline %.4f%s), 90%% coverage %.3f (%.0f s)", origin,
                 model["male"], min(r["male"] for r in rows[-len(methods):]), held, model["coverage_90"],
                 time.perf_counter() - began)
        if laplace_row is not None:
            log.info("origin %d: with Laplace draws instead of NUTS: MALE %.4f, 90%% interval score %.3f (NUTS %.3f)", origin,
                     laplace_row["male"], laplace_row["interval_90"], model["interval_90"])
    return Evaluation(pd.DataFrame(rows + diagnostics), forecasts, bands, calibrations)


# --------------------------------------------------------------------------------------------
# The rolling origin on a state x domain panel
# --------------------------------------------------------------------------------------------

PANEL_LEVEL_HELD = "origin's counts x national effect (diagnostic)"


def evaluate_panel(data: DomainDataset, config: CalibrateConfig, *, optimizer: optax.GradientTransformation | None = None,
                   checkpoint: Path | None = None) -> pd.DataFrame:
    """At each origin (a period's first year) calibrate on the periods up to it, forecast the
    inventors of every state and field in the periods starting within `evaluation.horizon` years,
    and score the model, persistence and national drift (`baselines.py`, on the periods after the
    first, equally spaced) with `evaluation.scores`, over the cells observed at the origin and at
    the target (a cell empty at the origin has no persistence forecast). The baselines' intervals
    come from their own pseudo-forecast errors, as on the metros.

    A diagnostic row, `PANEL_LEVEL_HELD`, moves the origin's counts by the fitted national effect alone:
    the difference between it and the model is what the community dynamics add.

    **Returns:** one row per origin and method: origin, method, cells, and the `evaluation.METRICS`.
    """
    e = config.evaluation
    check_panel(data, config)
    observed = data.observed_inventors().reshape(len(data.periods) - 1, -1)  # (P, R K)
    rows, diagnostics = [], []
    for origin in sorted(e.origins):
        began = time.perf_counter()
        o, ahead = data.period_index(origin), tuple(periods_ahead(data, origin, e.horizon))
        stem = None if checkpoint is None else Path(f"{checkpoint}_{origin}")
        fitted = calibrate_panel(data.through(origin), config, optimizer=optimizer, checkpoint=stem, phase=f"origin {origin}: ")
        truth = np.where(np.isfinite(observed[o])[None], observed[list(ahead)], np.nan)
        draws = draw_panel_estimates(fitted, key=jax.random.key(config.fit.seed + origin), num=e.draws)
        means, dispersion = predictive_inventors(draws, data, o, ahead)
        means = np.asarray(means).reshape(e.draws, len(ahead), -1)
        stable = np.isfinite(means).all(axis=(1, 2))
        if not stable.all():
            log.warning("origin %d: %d of %d parameter draws leave the model's stable range (non-finite inventors); "
                        "the intervals are read from the other %d", origin, (~stable).sum(), e.draws, stable.sum())
        probabilities = interval_probabilities(*INTERVALS)
        model_quantiles = count_quantiles(means[stable], np.asarray(dispersion)[stable, None, None], probabilities,
                                          jax.random.key(origin))[0]
        central = np.asarray(forecast_inventors(fitted.estimate, data, o, ahead)).reshape(len(ahead), -1)
        cells = int(np.isfinite(truth).sum())
        rows.append(dict(origin=origin, method="model", cells=cells,
                         **scores(truth, central, dict(zip(probabilities, model_quantiles)))))
        eta = np.asarray(national_effects(fitted.params.natural(), fitted.estimate.effects.year))
        moved = np.exp(eta[[data.observed_at[i] for i in ahead]] - eta[data.observed_at[o]])
        held = observed[o][None] * moved[:, None]  # the origin's counts moved by the national effect only
        diagnostics.append(dict(origin=origin, method=PANEL_LEVEL_HELD, cells=cells, **scores(truth, held, None)))
        history = observed[: o + 1]
        for name, method in (("persistence", persistence), ("national drift", national_drift)):
            mean, quantiles = baseline_forecast(method, history, len(ahead), probabilities, jax.random.key(origin))
            rows.append(dict(origin=origin, method=name, cells=cells, **scores(truth, mean, quantiles)))
        best = min(r["male"] for r in rows[-2:])
        log.info("origin %d: inventors %d periods ahead, model MALE %.4f (best baseline %.4f), 90%% coverage %.3f (%.0f s)",
                 origin, len(ahead), rows[-3]["male"], best, rows[-3]["coverage_90"], time.perf_counter() - began)
    return pd.DataFrame(rows + diagnostics)
