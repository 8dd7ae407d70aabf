"""Calibration: fit the free parameters with optax, polish with L-BFGS, Laplace errors.

`fit` minimises a loss over the parameters named free (`eqx.partition` with a filter spec) from
several starts at once: the starts are one `vmap`-ped batch, so one compiled step moves all of
them. The step is compiled once per loss, optimizer and data shape: the data and the prior are
arguments of the jitted step, not constants baked into it, so the polish of the rolling origin
reuses the program of the first polish. A fit checkpoints its whole state; `fit` called again
with the same checkpoint path resumes and reaches the same numbers as an uninterrupted run.
`calibrate` is the whole recipe: restarts, polish, Laplace approximation.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
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
from .errors import ConfigError
from .files import atomic_path, write_json
from .loss import Prior, negative_log_posterior, objective
from .params import PARAMETERS, POSITIVE, UNIT, Params, free_mask
from .training import Progress, adam_with_warmup, load_checkpoint, log, run_steps, save_checkpoint, strongly_typed

if TYPE_CHECKING:
    from .data import Dataset

POLISH = optax.lbfgs()  # one object, so that every polish shares one compiled step
POLISH_PATIENCE = 20  # the polish stops after this many steps without a relative gain of POLISH_TOLERANCE
POLISH_TOLERANCE = 0.0


@dataclass
class FitResult:
    params: Params  # the best start's parameters
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
    batch: Params  # the free parameters of every start (leading axis: restarts)
    opt_state: optax.OptState
    best_free: Params  # each start's best parameters so far
    best_loss: jax.Array  # (restarts,)
    since_improvement: int
    history: dict[str, list]


def _starts(free: Params, *, key: jax.Array, restarts: int, spread: float) -> Params:
    """`restarts` copies of the free parameters; all but the first perturbed (in declaration order)."""
    names = [name for name in PARAMETERS if free.unconstrained[name] is not None]
    keys = dict(zip(names, jax.random.split(key, len(names))))

    def perturbed(name, value):
        eps = spread * jax.random.normal(keys[name], (restarts, *jnp.shape(value)), dtype=jnp.result_type(value))
        return value[None] + eps.at[0].set(0.0)

    return eqx.tree_at(lambda p: [p.unconstrained[n] for n in names], free,
                       [perturbed(n, free.unconstrained[n]) for n in names])


@eqx.filter_jit
def _fit_step(loss: Callable, optimizer: optax.GradientTransformationExtraArgs, tolerance: float, arrays: tuple,
              fixed: Params, args: tuple):
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
    params: Params,
    args: tuple,
    optimizer: optax.GradientTransformation,
    config: FitConfig,
    *,
    phase: str = "fit",
    checkpoint_path: Path | None = None,
) -> FitResult:
    """Minimise `loss(params, *args)` over the free parameters from `config.restarts` starts.

    **Arguments:**

    - `loss`: a pure scalar function of `Params` and `args`, e.g. `loss.objective`. Keep it the
      same function object between calls: it keys the compiled step.
    - `params`: the start; fixed parameters keep these values.
    - `args`: the pytrees the loss reads (e.g. `(dataset, prior)`), passed to the compiled step.
    - `optimizer`: an optax transformation (e.g. `adam_with_warmup(1000)` or `optax.lbfgs()`).
    - `config`: `free`, `restarts`, `steps`, `spread`, `patience`, `tolerance`, `seed`,
      `checkpoint_every`, `stop_after`, `progress`.
    - `phase`: the name shown in progress and logs.
    - `checkpoint_path`: where to keep the fit's state; an existing checkpoint is resumed.

    **Returns:** a `FitResult`. Raises `training.Interrupted` (after checkpointing) on
    `stop_after`, Ctrl-C or `training.request_stop()`.
    """
    optimizer = optax.with_extra_args_support(optimizer)
    free, fixed = eqx.partition(params, free_mask(params, config.free))
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


# --------------------------------------------------------------------------------------------
# Laplace approximation
# --------------------------------------------------------------------------------------------


@dataclass
class Laplace:
    """Gaussian approximation at the optimum, on the unconstrained scale of the free parameters."""

    names: list[str]  # one per free scalar, e.g. "critical_mass[0]"
    mean: np.ndarray  # unconstrained values
    covariance: np.ndarray  # unconstrained scale
    natural: np.ndarray  # natural-scale values
    natural_se: np.ndarray  # delta-method standard errors on the natural scale (NaN if not identified)
    positive_definite: bool

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Central intervals on the natural scale: the unconstrained interval mapped through each
        parameter's constraint, so a positive parameter's interval stays positive."""
        z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
        sd = np.sqrt(np.clip(np.diag(self.covariance), 0, None)) if self.positive_definite else np.full(len(self.mean), np.nan)
        constraints = np.asarray([PARAMETERS[name.split("[")[0]].metadata["constraint"] for name in self.names])

        def natural(x):  # the constraints of params.to_natural, in float64 whatever JAX's precision
            return np.where(constraints == POSITIVE, np.logaddexp(0.0, x), np.where(constraints == UNIT, 1 / (1 + np.exp(-x)), x))

        with np.errstate(invalid="ignore"):  # NaN where the covariance is not usable
            return natural(self.mean - z * sd), natural(self.mean + z * sd)


def _free_names(free: Params) -> list[str]:
    return [name for name in PARAMETERS if free.unconstrained[name] is not None]


@eqx.filter_jit
def _curvature(loss: Callable, free: Params, fixed: Params, args):
    """The Hessian of `loss` over the flattened free parameters, and the natural values with their Jacobian."""
    flat, unravel = ravel_pytree(free)
    names = _free_names(free)

    def total(x):
        return loss(eqx.combine(unravel(x), fixed), *args)

    def natural_values(x):
        p = eqx.combine(unravel(x), fixed).natural()
        return jnp.concatenate([jnp.ravel(getattr(p, n)) for n in names])

    return flat, jax.hessian(total)(flat), natural_values(flat), jax.jacfwd(natural_values)(flat)


def laplace(loss: Callable[..., jax.Array], params: Params, args: tuple, free: list[str]) -> Laplace:
    """Laplace approximation of the density exp(-loss(params, *args)) over the free parameters.

    `loss` is the total negative log posterior (not per observation). Where the Hessian is not
    positive definite the covariance and the standard errors are NaN.
    """
    free_part, fixed = eqx.partition(params, free_mask(params, free))
    flat, hessian, natural, jacobian = (np.asarray(x) for x in _curvature(loss, free_part, fixed, args))
    hessian = 0.5 * (hessian + hessian.T)
    positive = bool(np.all(np.linalg.eigvalsh(hessian) > 0))
    covariance = np.linalg.pinv(hessian) if positive else np.full_like(hessian, np.nan)
    natural_cov = jacobian @ covariance @ jacobian.T
    names = []
    for name in _free_names(free_part):
        size = int(np.size(free_part.unconstrained[name]))
        names += [name] if np.ndim(free_part.unconstrained[name]) == 0 else [f"{name}[{i}]" for i in range(size)]
    se = np.sqrt(np.clip(np.diag(natural_cov), 0, None)) if positive else np.full(len(flat), np.nan)
    return Laplace(names, flat, covariance, natural, se, positive)


def sample_params(params: Params, free: list[str], approx: Laplace, *, key: jax.Array, num: int) -> Params:
    """`num` parameter draws from the Laplace approximation, stacked (leading axis `num`).

    Where the Hessian was not positive definite the draws all equal the estimate.
    """
    free_part, fixed = eqx.partition(params, free_mask(params, free))
    _, unravel = ravel_pytree(free_part)
    mean = jnp.asarray(approx.mean)
    if approx.positive_definite:
        draws = jax.random.multivariate_normal(key, mean, jnp.asarray(approx.covariance), shape=(num,), method="eigh")
    else:  # no usable covariance: every draw is the estimate (only count noise remains)
        draws = jnp.broadcast_to(mean, (num, mean.size))
    stacked = jax.vmap(unravel)(draws)
    return eqx.combine(stacked, jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num, *jnp.shape(x))), fixed))


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    """A calibrated model: its configuration, the estimate and its Laplace approximation."""

    config: CalibrateConfig
    params: Params
    laplace: Laplace
    restarts: FitResult | None = None  # the batched starts (None when loaded from a run folder)
    polished: FitResult | None = None  # the L-BFGS polish of the best start (None without a polish)

    @property
    def result(self) -> FitResult | None:
        return self.polished or self.restarts


def calibrate(
    data: Dataset,
    config: CalibrateConfig | None = None,
    *,
    optimizer: optax.GradientTransformation | None = None,
    checkpoint: Path | None = None,
    phase: str = "",
) -> Calibration:
    """Fit the free parameters to `data` by maximum a posteriori; errors from Laplace.

    The recipe: `config.fit.restarts` starts as one batch (`optimizer`, default
    `adam_with_warmup(config.fit.steps)`), an L-BFGS polish of the best until the loss stops
    improving, and the Laplace approximation of the posterior at the result.

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
    - `checkpoint`: where to keep checkpoints (`<checkpoint>.eqx/.json`, and `<checkpoint>_polish.*`
      for the polish); existing ones are resumed. None: no checkpoints.
    - `phase`: a prefix for the names of the phases in progress and logs.

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
    start = Params.from_natural(config.model.num_domains, **config.model.params)
    args = (data, Prior(start, tuple(fit_config.free), fit_config.prior_scale))
    restarts = fit(objective, start, args, optimizer or adam_with_warmup(fit_config.steps), fit_config,
                   phase=f"{phase}restarts", checkpoint_path=checkpoint)
    polished = None
    if fit_config.polish_steps:
        settings = dataclasses.replace(fit_config, restarts=1, steps=fit_config.polish_steps, spread=0.0,
                                       patience=POLISH_PATIENCE, tolerance=POLISH_TOLERANCE, stop_after=None)
        # it starts from the best start and keeps its own best, so it never ends worse than the starts
        polished = fit(objective, restarts.params, args, POLISH, settings, phase=f"{phase}polish (L-BFGS)",
                       checkpoint_path=None if checkpoint is None else Path(f"{checkpoint}_polish"))
    best = (polished or restarts).params
    started = time.perf_counter()
    approx = laplace(negative_log_posterior, best, args, fit_config.free)
    log.info("%sLaplace approximation: done in %.1f s; positive definite: %s", phase, time.perf_counter() - started,
             approx.positive_definite)
    return Calibration(config, best, approx, restarts, polished)


# --------------------------------------------------------------------------------------------
# A calibration on disk
# --------------------------------------------------------------------------------------------

FILES = ("calibration.json", "fitted.eqx", "laplace.npz")


def save_calibration(calibration: Calibration, folder: Path) -> None:
    """Write the configuration, the estimate and the Laplace approximation into `folder`."""
    folder = Path(folder)
    precision = str(jax.tree_util.tree_leaves(calibration.params)[0].dtype)
    write_json(folder / "calibration.json", dict(format=1, precision=precision, config=dataclasses.asdict(calibration.config)))
    with atomic_path(folder / "fitted.eqx") as tmp:
        eqx.tree_serialise_leaves(tmp, calibration.params)
    a = calibration.laplace
    with atomic_path(folder / "laplace.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, names=np.asarray(a.names), mean=a.mean, covariance=a.covariance, natural=a.natural,
                 natural_se=a.natural_se, positive_definite=a.positive_definite)


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
        config = from_dict(CalibrateConfig, stored["config"])
        with jax.enable_x64(stored["precision"] == "float64"):  # read in the precision it was written in
            like = Params.from_natural(config.model.num_domains, **config.model.params)
            params = eqx.tree_deserialise_leaves(folder / "fitted.eqx", like)
        with np.load(folder / "laplace.npz") as npz:
            approx = Laplace(list(npz["names"]), npz["mean"], npz["covariance"], npz["natural"], npz["natural_se"],
                             bool(npz["positive_definite"]))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, zipfile.BadZipFile) as error:  # truncated or edited
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"run={folder} is not a finished calibration: its files cannot be read ({first})") from None
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=float), params)  # then in this run's precision
    return Calibration(config, params, approx)
