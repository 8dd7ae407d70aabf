"""Calibration: the restarts (`fitting.fit`), a polish with L-BFGS, Laplace errors, and a calibration on disk.

`polish` is L-BFGS in rounds, each on the objective with the latent curvature's information
held at the round's start (`loss.frozen_objective`). `calibrate` is the whole recipe: restarts,
polish, Laplace approximation.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .config import CalibrateConfig, FitConfig, from_dict
from .effects import Estimate
from .errors import ConfigError
from .files import atomic_path, write_json
from .fitting import FitResult, fit
from .laplace import Laplace, estimate_mask, fitted_parameters, laplace
from .loss import Prior, curvature_information, expected_patents, frozen_objective, objective
from .params import Params
from .training import adam_with_warmup, log

if TYPE_CHECKING:
    from .data import Dataset

__all__ = ["Calibration", "FitResult", "calibrate", "calibration_prior", "fit", "load_calibration", "polish",
           "save_calibration"]

POLISH = optax.lbfgs()  # one object, so that every polish shares one compiled step
POLISH_PATIENCE = 20  # the polish stops after this many steps without a relative gain of POLISH_TOLERANCE
POLISH_TOLERANCE = 1e-8
POLISH_ROUNDS = 10  # at most this many rounds of the polish, each with the information refreshed
ROUND_TOLERANCE = 1e-8  # the polish ends with a round that gains less than this (relative)
DESCENT_FRACTIONS = (1.0, 0.5, 0.25, 0.125)  # how much of a round's move the polish tries to keep


@eqx.filter_jit
def _information(estimate: Estimate, data: Dataset, prior: Prior):
    return curvature_information(estimate, data, prior, expected_patents(estimate, data)[0])


@eqx.filter_jit
def _objective(estimate: Estimate, data: Dataset, prior: Prior) -> jax.Array:
    return objective(estimate, data, prior)


class Problem(NamedTuple):
    """What `polish` minimises: the objective (compiled), the same with the latent curvature's
    information held (a pure function, the loss of `fitting.fit`), and that information (compiled),
    each of `(estimate, data, prior)`; and what is free (`mask(estimate, fit_config)`, None: `fit`'s default)."""

    objective: Callable
    frozen: Callable
    information: Callable
    mask: Callable | None = None


METROS = Problem(_objective, frozen_objective, _information)
"""The metro calibration's problem (`loss.py`)."""


def polish(start: Estimate, data: Dataset, prior: Prior, config: FitConfig, *, phase: str = "polish",
           checkpoint: Path | None = None, problem: Problem = METROS) -> FitResult:
    """L-BFGS from `start` until the estimate is a fixed point of the curvature's information.

    The objective holds the latent curvature's information fixed for its gradient
    (`loss.latent_curvature`), so that gradient is not the gradient of the objective's value,
    and a line search along it stalls (on the metros: 21 steps, no gain). Each round therefore
    holds the information at the round's start (`loss.frozen_objective`, a function whose
    gradient is its value's, equal to the objective there) and runs L-BFGS on it for at most
    `config.polish_steps` steps, until `POLISH_PATIENCE` steps without a gain; the next round
    refreshes the information. The polish ends when a round gains less than `ROUND_TOLERANCE`
    (relative): the estimate then minimises the objective with its own information held fixed,
    the point Adam's steps on `objective` approach. `converged` says whether that happened
    within `POLISH_ROUNDS` rounds.

    A round's move is kept only as far as it lowers the objective itself, not only its frozen
    version (`_descent`: the whole move, else a half, a quarter or an eighth of it): the rounds
    are a fixed-point iteration, which need not descend, and on simulated panels rounds that
    were all kept raised the objective by 0.04 per observation and carried the fit to large
    latent scales far from the truth (`experiments/recovery`). A round none of whose moves lowers
    it ends the polish at that round's start. The result's loss is the objective's at the
    estimate returned, never above the start's.

    `checkpoint`: round i keeps `<checkpoint><i>.eqx/.json`; a finished round is read back.
    `problem`: the objective and its parts (`METROS`, or a panel's, `domains.PANEL`).
    """
    settings = dataclasses.replace(config, restarts=1, steps=config.polish_steps, spread=0.0,
                                   patience=POLISH_PATIENCE, tolerance=POLISH_TOLERANCE, stop_after=None)
    history: dict[str, list] = {"loss": [], "grad_norm": []}
    steps, seconds, converged, ending = 0, 0.0, False, "round limit reached"
    loss = float(problem.objective(start, data, prior))
    mask = None if problem.mask is None else problem.mask(start, config)
    for round_ in range(1, POLISH_ROUNDS + 1):
        information = problem.information(start, data, prior)
        result = fit(problem.frozen, start, (data, prior, information), POLISH, settings,
                     phase=f"{phase} (L-BFGS), round {round_}",
                     checkpoint_path=None if checkpoint is None else Path(f"{checkpoint}{round_}"), mask=mask)
        for key in history:
            history[key] += result.history[key]
        steps, seconds = steps + result.steps, seconds + result.seconds
        before = result.history["loss"][0][0]  # the round's start, where the frozen objective is the objective
        kept, after = _descent(start, result.estimate, loss, data, prior, problem.objective)
        if kept is None:  # the frozen objective fell but the objective did not, even part of the way
            ending = f"round {round_} did not lower the objective ({loss:.6g} -> {after:.6g} at best), so it was not kept"
            break
        start, loss = kept, after
        if before - result.best_loss <= ROUND_TOLERANCE * abs(before):
            converged, ending = True, "converged"
            break
    log.info("%s: %s after %d rounds (%d steps), loss %.6g", phase, ending, round_, steps, loss)
    return FitResult(start, history, np.array([loss]), 0, steps, converged, seconds)


def _descent(start: Estimate, end: Estimate, loss: float, data: Dataset, prior: Prior,
             objective_of: Callable) -> tuple[Estimate | None, float]:
    """The first of `start + t (end - start)`, t = 1, 1/2, 1/4, 1/8, whose objective is below
    `loss` (the objective at `start`), with that objective; (None, the lowest tried) if none is."""
    tried = []
    for t in DESCENT_FRACTIONS:
        candidate = jax.tree_util.tree_map(lambda a, b: a + t * (b - a), start, end)
        value = float(objective_of(candidate, data, prior))
        if value < loss:
            return candidate, value
        tried.append(value)
    return None, min(tried)


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


def calibration_prior(config: CalibrateConfig) -> Prior:
    """What a calibration with `config` estimates and its prior (`loss.Prior`): centred on the
    model's parameters (`model.params` over the defaults), over `fit.free` and the latent effects."""
    fit_config = config.fit
    return Prior(Params.from_natural(config.model.num_domains, **config.model.params),
                 fitted_parameters(fit_config.free, fit_config.region_effects),
                 fit_config.prior_scale, tuple(fit_config.region_effects), fit_config.national_effects)


@dataclass
class Calibration:
    """A calibrated model: its configuration, the estimate and its Laplace approximation."""

    config: CalibrateConfig
    estimate: Estimate
    laplace: Laplace
    restarts: FitResult | None = None  # the batched starts (None when loaded, or when warm-started)
    polished: FitResult | None = None  # the L-BFGS polish of the best start (None without a polish)
    posterior: np.ndarray | None = None  # (N, D) NUTS draws of the free entries, flat (`posterior.py`), if sampled

    @property
    def params(self) -> Params:
        return self.estimate.params

    @property
    def result(self) -> FitResult | None:
        return self.polished or self.restarts

    @property
    def mask(self) -> Estimate:
        """What was fitted: the filter spec of `laplace.estimate_mask`."""
        fit_config = self.config.fit
        return estimate_mask(self.estimate, fit_config.free, fit_config.region_effects, fit_config.national_effects)


def calibrate(
    data: Dataset,
    config: CalibrateConfig | None = None,
    *,
    optimizer: optax.GradientTransformation | None = None,
    checkpoint: Path | None = None,
    phase: str = "",
    start: Estimate | None = None,
) -> Calibration:
    """Fit the free parameters and latent effects to `data` by maximum a posteriori; errors from Laplace.

    The recipe: `config.fit.restarts` starts as one batch (`optimizer`, default
    `adam_with_warmup(config.fit.steps)`), an L-BFGS polish of the best until the loss stops
    improving, and the Laplace approximation of the posterior at the result. With `start` (an
    estimate of the same shapes, e.g. from a fit on fewer years) the restarts are skipped and
    the polish starts there.

    `config.data` is recorded with the result as the data's description (`save_calibration`;
    `diffcomm forecast` reloads the data from it): pass the `DataConfig` that `data` was loaded
    with. `config.optimizer` is read by the command line, which builds the transformation; here,
    pass `optimizer`. The precision is the caller's: with `config.model.x64` run inside
    `jax.enable_x64(True)` (checked).

    **Arguments:**

    - `data`: a `Dataset` (`load_dataset`).
    - `config`: model (start values, K), fit settings; the default calibrates as
      `diffcomm calibrate` does.
    - `optimizer`: an optax transformation for the restarts.
    - `checkpoint`: where to keep checkpoints (`<checkpoint>.eqx/.json`, and `<checkpoint>_polish<i>.*`
      for round i of the polish); existing ones are resumed. None: no checkpoints.
    - `phase`: a prefix for the names of the phases in progress and logs.
    - `start`: a warm start (see above).

    ```python
    data = load_dataset(DataConfig(regions=["41860", "41940", "42660"]))
    calibration = calibrate(data, CalibrateConfig(fit=FitConfig(steps=200)))
    calibration.laplace.natural  # fitted values of config.fit.free
    ```
    """
    config = config or CalibrateConfig()
    if config.model.x64 and not jax.config.jax_enable_x64:
        raise ConfigError("model.x64 is true but JAX runs in single precision: calibrate inside "
                          "`with jax.enable_x64(True):` (the command line does), or set model.x64=false")
    fit_config = config.fit
    prior = calibration_prior(config)
    centre = prior.centre
    args = (data, prior)
    restarts = None
    if start is None:
        restarts = fit(objective, Estimate.start(centre, data.num_regions, len(data.years) - 1), args,
                       optimizer or adam_with_warmup(fit_config.steps), fit_config, phase=f"{phase}restarts",
                       checkpoint_path=checkpoint)
        start = restarts.estimate
    polished = None
    if fit_config.polish_steps:
        polished = polish(start, data, prior, fit_config, phase=f"{phase}polish",
                          checkpoint=None if checkpoint is None else Path(f"{checkpoint}_polish"))
    best = polished.estimate if polished else start
    started = time.perf_counter()
    calibration = Calibration(config, best, None, restarts, polished)
    calibration.laplace = laplace(best, *args, calibration.mask)
    log.info("%sLaplace approximation: done in %.1f s; positive definite: %s", phase, time.perf_counter() - started,
             calibration.laplace.positive_definite)
    return calibration


# --------------------------------------------------------------------------------------------
# A calibration on disk
# --------------------------------------------------------------------------------------------

FILES = ("calibration.json", "fitted.eqx", "laplace.npz")
FORMAT = 4  # of the run's files; 3: the parameter `nonlocal_tie_slope` was added; 4: the Laplace's national part
POSTERIOR_DRAWS = "posterior_draws.npy"  # with inference=nuts: every chain's draws of the free entries, flat
_LAPLACE_ARRAYS = ("mean", "covariance", "natural", "natural_se", "region_mean", "region_precision", "cross")
_LAPLACE_OPTIONAL = ("region_update", "region_core")  # None without region effects, stored empty


def save_calibration(calibration: Calibration, folder: Path) -> None:
    """Write the configuration, the estimate and the Laplace approximation into `folder`."""
    folder = Path(folder)
    estimate = calibration.estimate
    precision = str(jax.tree_util.tree_leaves(estimate)[0].dtype)
    shape = dict(regions=int(estimate.effects.attraction.shape[0]), years=int(estimate.effects.year.shape[0]))
    write_json(folder / "calibration.json", dict(format=FORMAT, precision=precision, shape=shape,
                                                 config=dataclasses.asdict(calibration.config)))
    with atomic_path(folder / "fitted.eqx") as tmp:
        eqx.tree_serialise_leaves(tmp, estimate)
    a = calibration.laplace
    with atomic_path(folder / "laplace.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, names=np.asarray(a.names), region_effects=np.asarray(a.region_effects, dtype=str),
                 positive_definite=a.positive_definite, **{name: getattr(a, name) for name in _LAPLACE_ARRAYS},
                 **{name: np.zeros(0) if getattr(a, name) is None else getattr(a, name) for name in _LAPLACE_OPTIONAL})


def load_calibration(folder: Path) -> Calibration:
    """The calibration a finished `diffcomm calibrate` run wrote into `folder`.

    Raises `ConfigError` in one line if the folder holds no finished calibration or a damaged one.
    """
    folder = Path(folder)
    try:
        stored, unreadable = json.loads((folder / "calibration.json").read_text()), None
    except (OSError, ValueError) as error:
        stored, unreadable = {}, error  # missing or damaged: said below
    if isinstance(stored, dict) and stored.get("kind") == "domain_panel":
        raise ConfigError(f"run={folder} is a calibration on a state x domain panel (data.domain_panel); forecast, "
                          "simulate and optimize read calibrations on the metros")
    missing = [name for name in ("summary.json", *FILES) if not (folder / name).exists()]
    if missing:
        raise ConfigError(f"run={folder} is not a finished calibration: missing {', '.join(missing)}")
    try:
        if unreadable is not None:
            raise unreadable
        if not isinstance(stored, dict):
            raise ValueError("calibration.json holds no JSON object")
        if stored.get("format") != FORMAT:
            raise ConfigError(f"run={folder} was written by an earlier diffcomm (calibration format "
                              f"{stored.get('format')}, this one reads {FORMAT}): calibrate again")
        config = from_dict(CalibrateConfig, stored["config"])
        with jax.enable_x64(stored["precision"] == "float64"):  # read in the precision it was written in
            like = Estimate.start(Params.from_natural(config.model.num_domains, **config.model.params),
                                  stored["shape"]["regions"], stored["shape"]["years"])
            estimate = eqx.tree_deserialise_leaves(folder / "fitted.eqx", like)
        with np.load(folder / "laplace.npz") as npz:
            approx = Laplace(list(npz["names"]), positive_definite=bool(npz["positive_definite"]),
                             region_effects=list(npz["region_effects"]), **{name: npz[name] for name in _LAPLACE_ARRAYS},
                             **{name: npz[name] if npz[name].size else None for name in _LAPLACE_OPTIONAL})
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, zipfile.BadZipFile) as error:  # truncated or edited
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"run={folder} is not a finished calibration: its files cannot be read ({first})") from None
    estimate = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=float), estimate)  # then in this run's precision
    draws = folder / POSTERIOR_DRAWS
    return Calibration(config, estimate, approx, posterior=np.load(draws) if draws.exists() else None)
