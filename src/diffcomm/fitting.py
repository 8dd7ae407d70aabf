"""The batched fit: minimise a loss over the free part of an `Estimate` from several starts at once.

The starts are one `vmap`-ped batch, so one compiled step moves all of them. The step is
compiled once per loss, optimizer and data shape: the data and the prior are arguments of the
jitted step, not constants baked into it, so the fits at the rolling origins reuse the programs
of the first. A fit checkpoints its whole state; `fit` called again with the same checkpoint
path resumes and reaches the same numbers as an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .config import FitConfig
from .effects import Estimate
from .laplace import estimate_mask
from .params import PARAMETERS
from .training import Progress, load_checkpoint, run_steps, save_checkpoint, strongly_typed


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
    mask=None,
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
    - `mask`: what is free, a filter spec of `start` for `eqx.partition`; None: `laplace.estimate_mask`
      from `config` (for an `Estimate`). Any estimate with a `params` field fits; only its
      parameters are perturbed between starts.

    **Returns:** a `FitResult`. Raises `training.Interrupted` (after checkpointing) on
    `stop_after`, Ctrl-C or `training.request_stop()`.
    """
    optimizer = optax.with_extra_args_support(optimizer)
    if mask is None:
        mask = estimate_mask(start, config.free, config.region_effects, config.national_effects)
    free, fixed = eqx.partition(start, mask)
    batch = _starts(free, key=jax.random.key(config.seed), restarts=config.restarts, spread=config.spread)
    # strong types throughout: the step returns strong ones, and a weak one here would compile the step twice
    state = _FitState(batch, strongly_typed(jax.vmap(optimizer.init)(batch)), batch,
                      strongly_typed(jnp.full(config.restarts, jnp.inf)), 0, {"loss": [], "grad_norm": []})
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
