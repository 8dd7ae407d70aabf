"""Calibration on a state x domain panel (`data.domain_panel`): the metros' recipe on the panel's
objective (`domains.py`): batched restarts (`fitting.fit`), the L-BFGS polish (`calibrate.polish`
with `PANEL`), and a dense Laplace approximation (a few hundred free entries); and a panel
calibration on disk.
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

from .calibrate import FORMAT, FitResult, Problem, calibration_prior, polish
from .config import CalibrateConfig
from .data.panel import DomainDataset
from .domains import (
    NOISE,
    PanelEstimate,
    compiled_information,
    frozen_objective,
    objective,
    panel_mask,
)
from .errors import ConfigError
from .files import atomic_path, write_json
from .fitting import fit
from .laplace import Laplace, free_natural, stack_draws
from .loss import Prior
from .params import PARAMETERS, Params
from .training import adam_with_warmup

log = logging.getLogger(__name__)

PANEL = Problem(eqx.filter_jit(objective), frozen_objective, compiled_information, panel_mask)
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
    noise: pd.DataFrame  # parameter, value, se, lower95, upper95, meaning
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
            if origin not in later[1:] or not periods_ahead(data, origin, config.evaluation.horizon):
                raise ConfigError(f"evaluation.origins: with a domain panel each origin must be the first year of a period "
                                  f"from {later[1]} with a period starting within evaluation.horizon="
                                  f"{config.evaluation.horizon} years after it (periods: {list(data.periods)}), got {origin}")


def periods_ahead(data: DomainDataset, origin: int, horizon: int) -> list[int]:
    """The indices (among the later periods) of the periods starting within `horizon` years after `origin`."""
    return [i for i, start in enumerate(data.periods[1:]) if origin < start <= origin + horizon]


@eqx.filter_jit
def _curvature(free: PanelEstimate, fixed: PanelEstimate, data: DomainDataset, prior: Prior):
    flat, unravel = ravel_pytree(free)

    def at(x):
        return eqx.combine(unravel(x), fixed)

    held = compiled_information(at(flat), data, prior)

    def posterior(x):  # the objective the fit minimised, its information held (`domains.frozen_objective`)
        return frozen_objective(at(x), data, prior, held) * data.num_observations

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
    posterior over every free entry, dense (a few hundred entries at most), with the latent
    effects' curvature term and its information held, as the polish minimises it: without that
    term the Hessian of the joint density is indefinite along the attraction's scale (the funnel
    of a scale and its standardized effects; one negative eigenvalue on the panel). NaN
    covariance and errors where it is still not positive definite. Also the noise parameters'
    values, delta-method errors and 95% intervals."""
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
    for name in NOISE:  # on the log scale, as fitted: the interval is exp(log value +- 1.96 sd)
        i = names.index(name)
        sd = float(np.sqrt(max(covariance[i, i], 0.0))) if positive else float("nan")
        value = float(np.exp(flat[i]))
        noise_rows.append(dict(parameter=name, value=value, se=value * sd, lower95=value * np.exp(-1.959964 * sd),
                               upper95=value * np.exp(1.959964 * sd), meaning=NOISE[name][1]))
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


def draw_panel_estimates(calibration: PanelCalibration, *, key: jax.Array, num: int) -> PanelEstimate:
    """`num` draws of the estimate from its Laplace approximation, stacked (every draw the estimate
    where that is not positive definite)."""
    approx = calibration.laplace
    draws = np.broadcast_to(approx.mean, (num, approx.mean.size)).copy()
    if approx.positive_definite:
        draws += np.asarray(jax.random.multivariate_normal(key, jnp.zeros(approx.mean.size), jnp.asarray(approx.covariance),
                                                           shape=(num,), method="eigh"))
    return stack_draws(calibration.estimate, panel_mask(calibration.estimate, calibration.config.fit), draws)


# --------------------------------------------------------------------------------------------
# A panel calibration on disk
# --------------------------------------------------------------------------------------------

KIND = "domain_panel"  # `calibration.json`'s `kind`: `calibrate.load_calibration` refuses such a run


def save_panel_calibration(calibration: PanelCalibration, folder: Path) -> None:
    """Write the configuration (`calibration.json`) and the estimate (`fitted.eqx`) into `folder`."""
    estimate = calibration.estimate
    precision = str(jax.tree_util.tree_leaves(estimate)[0].dtype)
    write_json(Path(folder) / "calibration.json", dict(format=FORMAT, kind=KIND, precision=precision,
                                                       config=dataclasses.asdict(calibration.config)))
    with atomic_path(Path(folder) / "fitted.eqx") as tmp:
        eqx.tree_serialise_leaves(tmp, estimate)
