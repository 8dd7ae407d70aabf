"""Calibration: fit the free parameters and latent effects with optax, polish with L-BFGS, Laplace errors.

`fit` minimises a loss over the free part of an `Estimate` (the parameters named free and the
latent effects; `eqx.partition` with a filter spec) from several starts at once: the starts are
one `vmap`-ped batch, so one compiled step moves all of them. The step is compiled once per
loss, optimizer and data shape: the data and the prior are arguments of the jitted step, not
constants baked into it, so the fits at the rolling origins reuse the programs of the first. A
fit checkpoints its whole state; `fit` called again with the same checkpoint path resumes and
reaches the same numbers as an uninterrupted run.
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
from jax.flatten_util import ravel_pytree

from .config import CalibrateConfig, FitConfig, from_dict
from .effects import Estimate
from .errors import ConfigError
from .files import atomic_path, write_json
from .laplace import Laplace, estimate_mask, laplace
from .loss import Prior, curvature_information, expected_patents, frozen_objective, objective
from .params import PARAMETERS, Params
from .training import Progress, adam_with_warmup, load_checkpoint, log, run_steps, save_checkpoint, strongly_typed

if TYPE_CHECKING:
    from .data import Dataset

POLISH = optax.lbfgs()  # one object, so that every polish shares one compiled step
POLISH_PATIENCE = 20  # the polish stops after this many steps without a relative gain of POLISH_TOLERANCE
POLISH_TOLERANCE = 1e-8
POLISH_ROUNDS = 10  # at most this many rounds of the polish, each with the information refreshed
ROUND_TOLERANCE = 1e-8  # the polish ends with a round that gains less than this (relative)


@dataclass
class FitResult:
    estimate: Estimate  # the best start's parameters and effects
    history: dict[str, list]  # per step: loss and gradient norm of every start
    best_losses: np.ndarray  # (restarts,)
    best_restart: int
    steps: int
    converged: bool
    seconds: float

    @property
    def best_loss(self) -> float:
        return float(self.best_losses[self.best_restart])


class _FitState(NamedTuple):
    batch: Estimate  # the free part of every start (leading axis: restarts)
    opt_state: optax.OptState
    best_free: Estimate  # each start's best so far
    best_loss: jax.Array  # (restarts,)
    since_improvement: int
    history: dict[str, list]


def _starts(free: Estimate, *, key: jax.Array, restarts: int, spread: float) -> Estimate:
    """`restarts` copies of the free part; the parameters of all but the first perturbed (in
    declaration order); the latent effects start where they are in every copy."""
    names = [name for name in PARAMETERS if free.params.unconstrained[name] is not None]
    keys = dict(zip(names, jax.random.split(key, len(names))))

    def perturbed(name, value):
        eps = spread * jax.random.normal(keys[name], (restarts, *jnp.shape(value)), dtype=jnp.result_type(value))
        return value[None] + eps.at[0].set(0.0)

    batch = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (restarts, *jnp.shape(x))), free)
    return eqx.tree_at(lambda e: [e.params.unconstrained[n] for n in names], batch,
                       [perturbed(n, free.params.unconstrained[n]) for n in names])


@eqx.filter_jit
def _fit_step(loss: Callable, optimizer: optax.GradientTransformationExtraArgs, tolerance: float, arrays: tuple,
              fixed: Estimate, args: tuple):
    """One optimizer step of every start, and the bookkeeping of each start's best.

    `arrays`: the batch, optimizer state, best parameters and best losses of `_FitState`.

    **Returns:** the losses and gradient norms of the parameters before the step, which starts
    improved on their best by more than `tolerance` (relative), and the new batch, optimizer
    state, best parameters and best losses.
    """

    def one(free, opt_state):
        def value_of(f):
            return loss(eqx.combine(f, fixed), *args)

        value, grads = jax.value_and_grad(value_of)(free)
        updates, new_state = optimizer.update(grads, opt_state, free, value=value, grad=grads, value_fn=value_of)
        new_free = optax.apply_updates(free, updates)
        # a start that leaves the finite region stays where it was (optax.apply_if_finite looks at
        # the updates only and would also change the state's layout)
        ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(ravel_pytree(new_free)[0]))
        new_free, new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(ok, new, old), (new_free, new_state),
                                                     (free, opt_state))
        return value, jnp.linalg.norm(ravel_pytree(grads)[0]), new_free, new_state

    before, opt_state, best_free, best = arrays
    if jax.tree_util.tree_leaves(before)[0].shape[0] == 1:  # one start (the polish): no vmap, half the compile time
        first = lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree)  # noqa: E731
        value, grad_norm, batch, opt_state = jax.tree_util.tree_map(lambda x: x[None], one(first(before), first(opt_state)))
    else:
        value, grad_norm, batch, opt_state = jax.vmap(one)(before, opt_state)
    improved = jnp.where(jnp.isfinite(best), value < best - tolerance * jnp.abs(best), jnp.isfinite(value))
    best_free = jax.tree_util.tree_map(lambda b, cur: jnp.where(improved.reshape((-1,) + (1,) * (b.ndim - 1)), cur, b),
                                       best_free, before)
    return value, grad_norm, improved, batch, opt_state, best_free, jnp.where(improved, value, best)


def fit(
    loss: Callable[..., jax.Array],
    start: Estimate,
    args: tuple,
    optimizer: optax.GradientTransformation,
    config: FitConfig,
    *,
    phase: str = "fit",
    checkpoint_path: Path | None = None,
) -> FitResult:
    """Minimise `loss(estimate, *args)` over the free part of an estimate from `config.restarts` starts.

    **Arguments:**

    - `loss`: a pure scalar function of an `Estimate` and `args`, e.g. `loss.objective`. Keep it
      the same function object between calls: it keys the compiled step.
    - `start`: the start; what is not free keeps these values.
    - `args`: the pytrees the loss reads (e.g. `(dataset, prior)`), passed to the compiled step.
    - `optimizer`: an optax transformation (e.g. `adam_with_warmup(1000)` or `optax.lbfgs()`).
    - `config`: `free`, `region_effects`, `national_effects`, `restarts`, `steps`, `spread`, `patience`, `tolerance`, `seed`,
      `checkpoint_every`, `stop_after`, `progress`.
    - `phase`: the name shown in progress and logs.
    - `checkpoint_path`: where to keep the fit's state; an existing checkpoint is resumed.

    **Returns:** a `FitResult`. Raises `training.Interrupted` (after checkpointing) on
    `stop_after`, Ctrl-C or `training.request_stop()`.
    """
    optimizer = optax.with_extra_args_support(optimizer)
    free, fixed = eqx.partition(start, estimate_mask(start, config.free, config.region_effects, config.national_effects))
    batch = _starts(free, key=jax.random.key(config.seed), restarts=config.restarts, spread=config.spread)
    state = _FitState(batch, strongly_typed(jax.vmap(optimizer.init)(batch)), batch, jnp.full(config.restarts, jnp.inf), 0,
                      {"loss": [], "grad_norm": []})
    start = 0
    resumed = load_checkpoint(checkpoint_path, (state.batch, state.opt_state, state.best_free))
    if resumed is not None:
        (batch, opt_state, best_free), meta = resumed
        state = _FitState(batch, opt_state, best_free, jnp.asarray(meta["best_loss"], dtype=float), meta["since_improvement"],
                          meta["history"])
        start = meta["step"]

    def one_step(s: _FitState) -> tuple[_FitState, dict]:
        value, grad_norm, improved, *new = _fit_step(loss, optimizer, config.tolerance, s[:4], fixed, args)
        value, grad_norm = np.asarray(value), np.asarray(grad_norm)
        s.history["loss"].append(value.tolist())
        s.history["grad_norm"].append(grad_norm.tolist())
        since = 0 if bool(np.any(improved)) else s.since_improvement + 1
        return _FitState(*new, since, s.history), dict(loss=f"{np.nanmin(value):.6g}", grad=f"{np.nanmin(grad_norm):.3g}")

    def save(at: int, s: _FitState) -> None:
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, (s.batch, s.opt_state, s.best_free),
                            dict(step=at, history=s.history, best_loss=np.asarray(s.best_loss).tolist(),
                                 since_improvement=s.since_improvement))

    progress = Progress(phase, config.steps, enabled=config.progress, initial=start)
    state, steps = run_steps(
        one_step, state, start=start, steps=config.steps, save=save, progress=progress,
        done=lambda s: s.since_improvement >= config.patience, checkpoint_every=config.checkpoint_every,
        stop_after=config.stop_after, checkpoint_path=checkpoint_path,
    )
    converged = state.since_improvement >= config.patience
    best_losses = np.asarray(state.best_loss)
    best = int(np.nanargmin(best_losses))
    progress.close(f"{steps} steps, {'converged' if converged else 'step limit reached'}, "
                   f"best loss {best_losses[best]:.6g}")
    chosen = jax.tree_util.tree_map(lambda x: x[best], state.best_free)
    return FitResult(eqx.combine(chosen, fixed), state.history, best_losses, best, steps, bool(converged),
                     progress.seconds)


@eqx.filter_jit
def _information(estimate: Estimate, data: Dataset, prior: Prior):
    return curvature_information(estimate, data, prior, expected_patents(estimate, data)[0])


@eqx.filter_jit
def _objective(estimate: Estimate, data: Dataset, prior: Prior) -> jax.Array:
    return objective(estimate, data, prior)


def polish(start: Estimate, data: Dataset, prior: Prior, config: FitConfig, *, phase: str = "polish",
           checkpoint: Path | None = None) -> FitResult:
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
    within `POLISH_ROUNDS` rounds. The result's loss is the objective's at the estimate.

    `checkpoint`: round i keeps `<checkpoint><i>.eqx/.json`; a finished round is read back.
    """
    settings = dataclasses.replace(config, restarts=1, steps=config.polish_steps, spread=0.0,
                                   patience=POLISH_PATIENCE, tolerance=POLISH_TOLERANCE, stop_after=None)
    history: dict[str, list] = {"loss": [], "grad_norm": []}
    steps, seconds, converged = 0, 0.0, False
    for round_ in range(1, POLISH_ROUNDS + 1):
        information = _information(start, data, prior)
        result = fit(frozen_objective, start, (data, prior, information), POLISH, settings,
                     phase=f"{phase} (L-BFGS), round {round_}",
                     checkpoint_path=None if checkpoint is None else Path(f"{checkpoint}{round_}"))
        for key in history:
            history[key] += result.history[key]
        steps, seconds, start = steps + result.steps, seconds + result.seconds, result.estimate
        before = result.history["loss"][0][0]  # the round's start, where the frozen objective is the objective
        if before - result.best_loss <= ROUND_TOLERANCE * abs(before):
            converged = True
            break
    loss = float(_objective(start, data, prior))
    log.info("%s: %s after %d rounds (%d steps), loss %.6g", phase,
             "converged" if converged else "round limit reached", round_, steps, loss)
    return FitResult(start, history, np.array([loss]), 0, steps, converged, seconds)


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


def calibration_prior(config: CalibrateConfig) -> Prior:
    """What a calibration with `config` estimates and its prior (`loss.Prior`): centred on the
    model's parameters (`model.params` over the defaults), over `fit.free` and the latent effects."""
    fit_config = config.fit
    return Prior(Params.from_natural(config.model.num_domains, **config.model.params), tuple(fit_config.free),
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
POSTERIOR_DRAWS = "posterior_draws.npy"  # with inference=nuts: every chain's draws of the free entries, flat
_LAPLACE_ARRAYS = ("mean", "covariance", "natural", "natural_se", "region_mean", "region_precision", "cross")


def save_calibration(calibration: Calibration, folder: Path) -> None:
    """Write the configuration, the estimate and the Laplace approximation into `folder`."""
    folder = Path(folder)
    estimate = calibration.estimate
    precision = str(jax.tree_util.tree_leaves(estimate)[0].dtype)
    shape = dict(regions=int(estimate.effects.attraction.shape[0]), years=int(estimate.effects.year.shape[0]))
    write_json(folder / "calibration.json", dict(format=2, precision=precision, shape=shape,
                                                 config=dataclasses.asdict(calibration.config)))
    with atomic_path(folder / "fitted.eqx") as tmp:
        eqx.tree_serialise_leaves(tmp, estimate)
    a = calibration.laplace
    with atomic_path(folder / "laplace.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, names=np.asarray(a.names), region_effects=np.asarray(a.region_effects, dtype=str),
                 positive_definite=a.positive_definite, **{name: getattr(a, name) for name in _LAPLACE_ARRAYS})


def load_calibration(folder: Path) -> Calibration:
    """The calibration a finished `diffcomm calibrate` run wrote into `folder`.

    Raises `ConfigError` in one line if the folder holds no finished calibration or a damaged one.
    """
    folder = Path(folder)
    missing = [name for name in ("summary.json", *FILES) if not (folder / name).exists()]
    if missing:
        raise ConfigError(f"run={folder} is not a finished calibration: missing {', '.join(missing)}")
    try:
        stored = json.loads((folder / "calibration.json").read_text())
        if stored.get("format") != 2:
            raise ConfigError(f"run={folder} was written by an earlier diffcomm (calibration format "
                              f"{stored.get('format')}, this one reads 2): calibrate again")
        config = from_dict(CalibrateConfig, stored["config"])
        with jax.enable_x64(stored["precision"] == "float64"):  # read in the precision it was written in
            like = Estimate.start(Params.from_natural(config.model.num_domains, **config.model.params),
                                  stored["shape"]["regions"], stored["shape"]["years"])
            estimate = eqx.tree_deserialise_leaves(folder / "fitted.eqx", like)
        with np.load(folder / "laplace.npz") as npz:
            approx = Laplace(list(npz["names"]), positive_definite=bool(npz["positive_definite"]),
                             region_effects=list(npz["region_effects"]), **{name: npz[name] for name in _LAPLACE_ARRAYS})
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, zipfile.BadZipFile) as error:  # truncated or edited
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"run={folder} is not a finished calibration: its files cannot be read ({first})") from None
    estimate = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=float), estimate)  # then in this run's precision
    draws = folder / POSTERIOR_DRAWS
    return Calibration(config, estimate, approx, posterior=np.load(draws) if draws.exists() else None)
