"""Fit free parameters with optax: batched restarts, early stopping, checkpoints, Laplace errors.

`fit` minimises a loss over the parameters named free (`eqx.partition` with a filter spec)
from several starts at once: the starts are one `vmap`-ped batch, so one compiled step moves all
of them. A run checkpoints its whole optimizer state; `fit` called again with the same
checkpoint path resumes from it and reaches the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .model import Params
from .report import atomic_path, write_json


@dataclass
class FitSettings:
    """How to fit. `steps` is the largest number of steps; early stopping may end sooner."""

    free: list[str]
    restarts: int = 4
    steps: int = 400
    spread: float = 0.3  # sd of the perturbation of starts, on the unconstrained scale
    patience: int = 50  # steps without relative improvement > `tolerance` before stopping
    tolerance: float = 1e-5
    checkpoint_every: int = 50
    line_search: bool = False  # optimizers such as optax.lbfgs need value and value_fn
    seed: int = 0
    stop_after: int | None = None  # stop (checkpointed) after this many steps in this call


class Interrupted(Exception):
    """Raised when a fit stops early by request; its checkpoint lets a later call resume."""

    def __init__(self, step: int, path: Path | None):
        super().__init__(f"stopped at step {step}" + (f"; checkpoint in {path}" if path else ""))
        self.step, self.path = step, path


@dataclass
class FitResult:
    params: Params  # the best restart's parameters
    history: dict[str, list]  # per step: loss and gradient norm of every restart
    best_losses: np.ndarray  # (restarts,)
    best_restart: int
    steps: int
    converged: bool
    seconds: float


def warmup_cosine(peak: float, steps: int, *, warmup_fraction: float = 0.05, final_fraction: float = 0.04) -> optax.Schedule:
    """Learning rate: linear warm-up over a fraction of `steps`, then cosine decay.

    ```yaml
    learning_rate: {_target_: diffcomm.calibrate.warmup_cosine, peak: 0.05, steps: ${fit.steps}}
    ```
    """
    warmup = max(1, int(warmup_fraction * steps))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(warmup + 1, steps), peak * final_fraction)


def free_filter(params: Params, free: list[str]) -> Params:
    """A filter spec: True for the named fields, False elsewhere."""
    names = [f.name for f in dataclasses.fields(Params)]
    unknown = sorted(set(free) - set(names))
    if unknown:
        raise ValueError(f"unknown free parameter(s) {unknown}; known: {sorted(names)}")
    # one array leaf per field, in field order; unflattening skips __init__'s shape checks
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, [n in free for n in names])


def checkpointed_loop(
    step: Callable[[], dict],
    *,
    start: int,
    steps: int,
    save: Callable[[int], None],
    done: Callable[[], bool] = lambda: False,
    checkpoint_every: int = 0,
    stop_after: int | None = None,
    checkpoint_path: Path | None = None,
    progress: bool = True,
    desc: str = "",
) -> int:
    """Call `step()` from step `start` until `steps` (or `done()`), with a progress bar.

    `step` does one iteration and returns what the bar should show. `save(i)` checkpoints after
    step i: every `checkpoint_every` steps and at the end. After `stop_after` steps in this call,
    or on Ctrl-C, it checkpoints and raises `Interrupted`. Returns the number of steps done.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    bar = tqdm(total=steps, initial=start, disable=not progress, desc=desc, unit="step")
    i = start
    try:
        while i < steps and not done():
            if stop_after is not None and i - start >= stop_after:
                save(i)
                raise Interrupted(i, checkpoint_path)
            shown = step()
            i += 1
            bar.update(1)
            bar.set_postfix(**shown, time=f"{time.perf_counter() - started:.0f}s")
            if checkpoint_every and i % checkpoint_every == 0:
                save(i)
    except KeyboardInterrupt:
        save(i)
        raise Interrupted(i, checkpoint_path) from None
    finally:
        bar.close()
    save(i)
    return i


def _starts(free_params, *, key, restarts: int, spread: float):
    """`restarts` copies of the free parameters; all but the first perturbed."""
    leaves, treedef = jax.tree_util.tree_flatten(free_params)
    keys = jax.random.split(key, len(leaves))
    noisy = []
    for k, leaf in zip(keys, leaves):
        eps = spread * jax.random.normal(k, (restarts, *jnp.shape(leaf)), dtype=jnp.result_type(leaf))
        noisy.append(leaf[None] + eps.at[0].set(0.0))
    return jax.tree_util.tree_unflatten(treedef, noisy)


def _make_step(loss: Callable, optimizer: optax.GradientTransformation, fixed, line_search: bool):
    def one(free, opt_state):
        def objective(fr):
            return loss(eqx.combine(fr, fixed))

        value, grads = jax.value_and_grad(objective)(free)
        if line_search:
            updates, new_state = optimizer.update(grads, opt_state, free, value=value, grad=grads, value_fn=objective)
        else:
            updates, new_state = optimizer.update(grads, opt_state, free)
        new_free = optax.apply_updates(free, updates)
        ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(ravel_pytree(new_free)[0]))
        # a start that leaves the finite region stays where it was
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        new_free = jax.tree_util.tree_map(keep, new_free, free)
        new_state = jax.tree_util.tree_map(keep, new_state, opt_state)
        return value, jnp.linalg.norm(ravel_pytree(grads)[0]), new_free, new_state

    return eqx.filter_jit(jax.vmap(one))


def fit(
    loss: Callable[[Params], jax.Array],
    params: Params,
    optimizer: optax.GradientTransformation,
    settings: FitSettings,
    *,
    checkpoint_path: Path | None = None,
    progress: bool = True,
) -> FitResult:
    """Minimise `loss(params)` over the free parameters from `settings.restarts` starts.

    **Arguments:**

    - `loss`: a scalar function of `Params` (already closed over the data).
    - `params`: the start; fixed parameters keep these values.
    - `optimizer`: an optax transformation (e.g. `optax.adam(schedule)` or `optax.lbfgs()`).
    - `settings`: see `FitSettings`.
    - `checkpoint_path`: where to keep the optimizer state; an existing checkpoint is resumed.
    - `progress`: show a progress bar with loss, gradient norm and time.

    **Returns:** a `FitResult`. Raises `Interrupted` (after checkpointing) on `stop_after` or Ctrl-C.
    """
    spec = free_filter(params, settings.free)
    free, fixed = eqx.partition(params, spec)
    batch = _starts(free, key=jax.random.key(settings.seed), restarts=settings.restarts, spread=settings.spread)
    opt_state = jax.vmap(optimizer.init)(batch)
    step_fn = _make_step(loss, optimizer, fixed, settings.line_search)
    best_loss = np.full(settings.restarts, np.inf)
    best_free = batch
    history: dict[str, list] = {"loss": [], "grad_norm": []}
    since_improvement = 0
    start_step = 0
    if checkpoint_path is not None and Path(checkpoint_path).with_suffix(".json").exists():
        (batch, opt_state, best_free), meta = load_checkpoint(checkpoint_path, (batch, opt_state, best_free))
        history, start_step = meta["history"], meta["step"]
        best_loss, since_improvement = np.asarray(meta["best_loss"], float), meta["since_improvement"]

    state = dict(batch=batch, opt_state=opt_state, best_free=best_free, best_loss=best_loss,
                 since_improvement=since_improvement)

    def one_step() -> dict:
        value, grad_norm, new_batch, new_state = step_fn(state["batch"], state["opt_state"])
        value, grad_norm = np.asarray(value), np.asarray(grad_norm)
        best = state["best_loss"]
        with np.errstate(invalid="ignore"):
            improved = np.where(np.isfinite(best), value < best - settings.tolerance * np.abs(best), np.isfinite(value))
        mask = jnp.asarray(improved)
        state["best_free"] = jax.tree_util.tree_map(
            lambda b, cur: jnp.where(mask.reshape((-1,) + (1,) * (b.ndim - 1)), cur, b), state["best_free"], state["batch"]
        )
        state["best_loss"] = np.where(improved, value, best)
        state["since_improvement"] = 0 if improved.any() else state["since_improvement"] + 1
        history["loss"].append(value.tolist())
        history["grad_norm"].append(grad_norm.tolist())
        state["batch"], state["opt_state"] = new_batch, new_state
        return dict(loss=f"{np.nanmin(value):.6g}", grad=f"{np.nanmin(grad_norm):.3g}")

    def save(at: int) -> None:
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                (state["batch"], state["opt_state"], state["best_free"]),
                dict(step=at, history=history, best_loss=state["best_loss"].tolist(),
                     since_improvement=state["since_improvement"]),
            )

    started = time.perf_counter()
    step = checkpointed_loop(
        one_step, start=start_step, steps=settings.steps, save=save,
        done=lambda: state["since_improvement"] >= settings.patience,
        checkpoint_every=settings.checkpoint_every, stop_after=settings.stop_after,
        checkpoint_path=checkpoint_path, progress=progress, desc="calibrate",
    )
    best_loss, best_free = state["best_loss"], state["best_free"]
    converged = state["since_improvement"] >= settings.patience
    best = int(np.nanargmin(best_loss))
    chosen = jax.tree_util.tree_map(lambda x: x[best], best_free)
    return FitResult(
        params=eqx.combine(chosen, fixed),
        history=history,
        best_losses=best_loss,
        best_restart=best,
        steps=step,
        converged=bool(converged),
        seconds=time.perf_counter() - started,
    )


def save_checkpoint(path: Path, tree, meta: dict) -> None:
    """Arrays with equinox serialisation (`.eqx`), the rest as JSON; both written atomically."""
    path = Path(path)
    with atomic_path(path.with_suffix(".eqx")) as tmp:
        eqx.tree_serialise_leaves(tmp, tree)
    write_json(path.with_suffix(".json"), meta)


def load_checkpoint(path: Path, like):
    path = Path(path)
    tree = eqx.tree_deserialise_leaves(path.with_suffix(".eqx"), like)
    return tree, json.loads(path.with_suffix(".json").read_text())


# --------------------------------------------------------------------------------------------
# Laplace approximation
# --------------------------------------------------------------------------------------------


@dataclass
class Laplace:
    """Gaussian approximation at the optimum on the unconstrained scale of the free parameters."""

    names: list[str]  # one per free scalar, e.g. "critical_mass[0]"
    mean: np.ndarray  # unconstrained values
    covariance: np.ndarray  # unconstrained scale
    natural: np.ndarray  # natural-scale values
    natural_se: np.ndarray  # delta-method standard errors on the natural scale (NaN if not identified)
    positive_definite: bool
    unravel: Callable = dataclasses.field(repr=False, default=None)


def laplace(loss: Callable[[Params], jax.Array], params: Params, free: list[str]) -> Laplace:
    """Hessian of the total negative log-likelihood at `params` over the free parameters."""
    spec = free_filter(params, free)
    free_part, fixed = eqx.partition(params, spec)
    flat, unravel = ravel_pytree(free_part)

    def objective(x):
        return loss(eqx.combine(unravel(x), fixed))

    def natural_values(x):
        p = eqx.combine(unravel(x), fixed).natural()
        return jnp.concatenate([jnp.ravel(getattr(p, n)) for n in _flat_names(free_part)])

    hessian = np.asarray(jax.hessian(objective)(flat))
    hessian = 0.5 * (hessian + hessian.T)
    eigenvalues = np.linalg.eigvalsh(hessian)
    positive = bool(np.all(eigenvalues > 0))
    covariance = np.linalg.pinv(hessian) if positive else np.full_like(hessian, np.nan)
    jac = np.asarray(jax.jacfwd(natural_values)(flat))
    natural_cov = jac @ covariance @ jac.T
    names = _scalar_names(free_part)
    return Laplace(names, np.asarray(flat), covariance, np.asarray(natural_values(flat)),
                   np.sqrt(np.clip(np.diag(natural_cov), 0, None)) if positive else np.full(len(flat), np.nan),
                   positive, unravel)


def _flat_names(free_part) -> list[str]:
    return [f.name for f in dataclasses.fields(Params) if getattr(free_part, f.name) is not None]


def _scalar_names(free_part) -> list[str]:
    names = []
    for name in _flat_names(free_part):
        value = getattr(free_part, name)
        names += [name] if jnp.ndim(value) == 0 else [f"{name}[{i}]" for i in range(jnp.size(value))]
    return names


def sample_params(params: Params, free: list[str], approx: Laplace, *, key, num: int) -> Params:
    """`num` parameter draws from the Laplace approximation, stacked (leading axis `num`).

    Where the Hessian was not positive definite the draws all equal the estimate.
    """
    spec = free_filter(params, free)
    _, fixed = eqx.partition(params, spec)
    mean = jnp.asarray(approx.mean)
    if approx.positive_definite:
        draws = jax.random.multivariate_normal(key, mean, jnp.asarray(approx.covariance), shape=(num,), method="eigh")
    else:  # no usable covariance: every draw is the estimate (only count noise remains)
        draws = jnp.broadcast_to(mean, (num, mean.size))
    stacked = jax.vmap(approx.unravel)(draws)
    return eqx.combine(stacked, jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num, *jnp.shape(x))), fixed))
