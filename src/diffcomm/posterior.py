"""The full posterior of a calibration by NUTS (BlackJAX), started at the MAP.

What is sampled: the joint posterior of the free parameters, the standardized region effects and
the national innovations, with the likelihood and priors of the MAP (`loss.log_joint`). The MAP's
objective adds the Laplace-marginal term for the latent effects (`loss.latent_curvature`); NUTS
integrates over the effects instead, so that term is not part of the density sampled.

Coordinates (`whitening.py`). NUTS runs on `w`, a linear map of the sampler's entries `y`, which
are the free entries of an estimate with the national effects in place of their innovations;
`w` is standard normal under the Laplace approximation, corrected along the exact curvature's
stiffest directions at the MAP.

The metric. The chains need not stay near the MAP: on the US metros they settle where the Laplace
whitening is off by factors of several, and with the identity metric in `w` the trees ran to
their depth limit at steps of 0.02-0.08. So the warm-up also learns a metric from the chains'
own draws, in Stan's windows (`adaptation_windows`): a first window tunes only the step size,
then windows of doubling length each end with the covariance of their draws, pooled over the
chains and shrunk towards the identity, which becomes the metric (`Metric`: dense over the
globals' coordinates, the first G of `w`, and a scale per region coordinate, then a stretch
along the few directions over all coordinates in which the window's draws still spread beyond
chance, at most `nuts.metric_rank`); a last window tunes the step size to it. Those directions:
on the US metros one, in every window, along which the draws spread with sd 8-15 where the rest
have 1 — the buzz-quality scale, the patents intercept and buzz scale moving with all regions'
standardized effects together, a trade-off neither a dense block over the globals nor a scale
per region can follow; left to the trees, it made them long. NUTS runs on `v` with `w = metric(v)` and an identity mass matrix,
which is the same as a mass matrix equal to the inverse of that covariance in `w`. The chains'
step size is tuned by dual averaging towards an acceptance of `nuts.target_acceptance` (0.8; Stan's scheme, BlackJAX's
implementation), one for all chains on their mean acceptance (in lockstep a chain at a smaller
step would set the pace of all), restarted from its last value whenever the metric changes (`RESTART_CENTRE`); the draws then
take one step size for all chains, where the acceptance curve fitted to the last stretch of the
warm-up meets that target (`step_for_acceptance`; dual averaging's own final step overshot the
target acceptance, 0.90 for 0.8 on the US metros). BlackJAX's own
window adaptation was not used: it keeps a diagonal or a fully dense matrix (over 1,000
coordinates on the metros), runs its warm-up as one program without checkpoints, and over the
whole window schedule ran for over 20 minutes on the metros without finishing 300 steps.

Before the first metric the trees are capped at `nuts.early_doublings` doublings (31 leapfrog
steps; later ones at `nuts.max_doublings`): with the Laplace whitening as metric, directions off
by factors up to 15 sent the trees of the first 50 transitions on the US metros to 143-172 steps,
a quarter of the whole run's time, to learn a metric the next windows refine anyway.

The precision. The simulation inside the density runs in single precision and the likelihood
and its sum in double (`nuts.simulation_precision`, `loss.expected_patents`): 0.6-0.7 of the
time of a leapfrog step in double on CPU; on the US metros the log density within 0.004 of
double precision (of 29,000; `benchmarks/bench_posterior_gradient.py`), its differences along a
trajectory of 20 steps within 6e-4 and its gradient within 3e-5 relative at the chains'
positions, against Hamiltonian errors of order 0.1-1 that the acceptance reads. The MAP, the
Laplace approximation and the whitening stay in double.

Chains are one `vmap`, split over the devices there are (`nuts.devices`, `sharding.py`; on CPU
one per core, as one device's program runs on under two cores of two). Warm-up and draws run in
blocks of `nuts.block` transitions, each checkpointed (a rerun resumes) and reported; one
compiled program for each tree limit, since whether a block adapts is an argument, not a program
of its own (about 10 s of compilation each on the US metros). BlackJAX and ArviZ are the
`posterior` extra.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .calibrate import Calibration, calibration_prior
from .config import NutsConfig
from .errors import ConfigError
from .laplace import _layout, free_natural
from .sharding import shard_chains
from .training import Progress, load_checkpoint, log, save_checkpoint
from .whitening import Metric, coordinates, whitening, window_metric

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from .data import Dataset


def require_sampler():
    """BlackJAX, or a `ConfigError` saying how to install it (checked before a calibration starts)."""
    try:
        import blackjax
    except ImportError:  # an optional extra
        raise ConfigError("inference=nuts needs BlackJAX and ArviZ: pip install -e '.[posterior]'") from None
    return blackjax


def adaptation_windows(warmup: int, block: int) -> list[tuple[int, int]]:
    """The warm-up's metric windows `(start, end)` in transitions, whole blocks each: Stan's
    schedule scaled to the warm-up (the first 5% for the step size alone, then windows doubling
    from one block, the last stretched to leave the final 10% for the step size). None where the
    warm-up holds fewer than five blocks. Stan gives the step size alone 15%, for chains that start
    far out; these start at the MAP, and on the US metros the first 100 transitions, with the
    Laplace whitening as metric, took 181 leapfrog steps each against 61 after the first metric."""
    blocks = warmup // block
    if blocks < 5:
        return []
    first, last = max(1, round(0.05 * blocks)), max(1, round(0.1 * blocks))
    windows, start, size = [], first, 1
    while start < blocks - last:
        end = start + size
        if end + 2 * size > blocks - last:  # the next window would not fit: this one takes the rest
            end = blocks - last
        windows.append((start * block, end * block))
        start, size = end, 2 * size
    return windows


INITIAL_STEP = 0.02
"""The warm-up's first step size. Dual averaging centres its search on 10x this (Hoffman & Gelman's
mu); from 0.1 the first transitions on the metros tried steps near 1, diverged, and the average
fell to 0.005-0.08 with 144 leapfrog steps a transition."""
RESTART_CENTRE = 1.0
"""Where dual averaging centres its search after a metric change, in multiples of the last
window's step. Stan restarts at 10x, as at the start; but the step's scale is known by then. At
10x the second transition after a restart takes about ten times the tuned step, and the average
of the errors then pulls the steps below it: on the US metros, after the restart at transition
450, 14 divergent transitions in 25 (1 in the 75 before) and 61 leapfrog steps a transition
(31 before)."""
START_SPREAD = 0.1  # the chains' starts: the MAP plus this many corrected-Laplace sds of noise


class _Chains(eqx.Module):
    """What the chains carry between blocks (and checkpoints): positions, the metric, the chains'
    one step-size adaptation, the warm-up's and the draws' positions, and every transition's
    divergence and tree size."""

    position: jax.Array  # (C, D) in the metric's coordinates `v`
    metric: Metric  # w = metric(v), shared by the chains
    adaptation: object  # BlackJAX's dual-averaging state, scalar leaves: one search for all the chains
    warm: jax.Array  # (C, warm-up, D) the warm-up's positions in `w`, from which the metric is learnt; (C, 0, D) if none is
    draws: jax.Array  # (C, S, D) flat free entries
    log_density: jax.Array  # (C, S)
    divergent: jax.Array  # (C, warm-up + S)
    leapfrogs: jax.Array  # (C, warm-up + S)
    acceptance: jax.Array  # (C, warm-up + S) each transition's mean acceptance probability
    step: jax.Array  # (C, warm-up + S) each transition's step size; after the warm-up the draws' (`_draw_step`)


def step_adaptation(config: NutsConfig, dtype):
    """BlackJAX's dual averaging towards `config.target_acceptance`: `(restart, update, final)`,
    `restart(step, centre)` taking a step size to a state in `dtype` (the draws' precision) whose
    search is centred on `centre` times it (Hoffman & Gelman's mu)."""
    from blackjax.adaptation.step_size import dual_averaging_adaptation
    init, update, final = dual_averaging_adaptation(config.target_acceptance)

    def restart(step, centre):
        state = init(step)._replace(mu=jnp.log(centre * step))
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), state)

    return restart, update, final


def _windows(config: NutsConfig) -> dict[int, int]:
    """The metric windows by the transition that ends them: `{end: start}` (none without `adapt_metric`)."""
    return {end: start for start, end in adaptation_windows(config.warmup, config.block)} if config.adapt_metric else {}


def initial_chains(config: NutsConfig, starts: jax.Array, num_global: int) -> _Chains:
    """The chains at `starts` (C, D) before their first transition; also the layout a checkpoint
    of `sample_posterior` is read into."""
    (chains, dim), dtype, total = starts.shape, starts.dtype, config.warmup + config.draws
    restart = step_adaptation(config, dtype)[0]
    metric = Metric.identity(num_global, dim, dtype, config.metric_rank)
    return _Chains(starts, metric, restart(jnp.asarray(INITIAL_STEP, dtype), 10.0),
                   jnp.zeros((chains, config.warmup if _windows(config) else 0, dim), dtype),  # kept only if a metric is learnt
                   jnp.zeros((chains, config.draws, dim), dtype), jnp.zeros((chains, config.draws), dtype),
                   jnp.zeros((chains, total), bool), jnp.zeros((chains, total), jnp.int32),
                   jnp.zeros((chains, total), dtype), jnp.zeros((chains, total), dtype))


_by_chain = lambda c: (c.position, c.warm, c.draws, c.log_density, c.divergent, c.leapfrogs, c.acceptance, c.step)  # noqa: E731
"""What of `_Chains` has a chain axis (`sharding.shard_chains`); the metric and the step search do not."""


def _adapt_metric(arrays: _Chains, start: int, end: int, num_global: int, restart, da_final) -> _Chains:
    """At the end of a window: the metric learnt from its draws, the positions carried into it,
    and the step-size adaptation restarted (`restart`) from its current value."""
    metric = window_metric(np.asarray(arrays.warm[:, start:end]), num_global, arrays.metric.stretch.shape[0])
    position = metric.inverse(arrays.metric(arrays.position))
    adaptation = restart(da_final(arrays.adaptation), RESTART_CENTRE)
    log.info("posterior: metric from warm-up transitions %d-%d: sd of the globals' coordinates %.2g-%.2g, of the regions' "
             "%.2g-%.2g%s", start + 1, end, *_metric_range(metric), _directions(metric))
    return eqx.tree_at(lambda c: (c.metric, c.position, c.adaptation), arrays, (metric, position, adaptation))


def step_for_acceptance(step: np.ndarray, acceptance: np.ndarray, target: float) -> float | None:
    """The step size at which a logistic curve of the acceptance in the log step, fitted to
    transitions at varied steps (a quasi-binomial regression by iteratively reweighted least
    squares), gives `target`; within the range of `step`. None where the fitted acceptance does not
    fall as the step grows.

    Why not dual averaging's own final step: that is the average of its log steps, whose iterates
    spread by a factor of about 3 around it, and the acceptance is concave in the log step there
    (near 1 for small steps, near 0 for divergent large ones). The mean acceptance over the
    iterates meets the target, the acceptance at their average is higher: 0.90 for a target of 0.8
    on the US metros, where 1.3 times that step gave 0.83 and trees half as long."""
    x = np.log(np.ravel(step))
    y = np.clip(np.ravel(acceptance), 0.0, 1.0)
    if x.size < 3 or np.ptp(x) < 1e-6:
        return None
    design = np.stack([np.ones_like(x), x - x.mean()], 1)
    beta = np.zeros(2)
    for _ in range(50):
        mean = np.clip(1 / (1 + np.exp(-design @ beta)), 1e-6, 1 - 1e-6)
        weight = mean * (1 - mean)
        try:
            update = np.linalg.solve(design.T @ (weight[:, None] * design), design.T @ (y - mean))
        except np.linalg.LinAlgError:
            return None
        beta = beta + update
        if np.max(np.abs(update)) < 1e-10:
            break
    if not (np.all(np.isfinite(beta)) and beta[1] < 0):
        return None
    log_step = x.mean() + (np.log(target / (1 - target)) - beta[0]) / beta[1]
    return float(np.exp(np.clip(log_step, x.min(), x.max())))


def _draw_step(arrays: _Chains, start: int, end: int, target: float, da_final) -> _Chains:
    """At the end of the warm-up: one step size for every chain's draws, from the curve of the
    acceptance in the step over transitions `start`-`end` of all chains (`step_for_acceptance`;
    where that finds none, dual averaging's step). One for all: the chains share the
    metric and sample one distribution, and in lockstep the chain with the smallest step sets the
    pace of all."""
    averaged = float(da_final(arrays.adaptation))
    fitted = step_for_acceptance(np.asarray(arrays.step[:, start:end]), np.asarray(arrays.acceptance[:, start:end]), target)
    chosen = np.full(arrays.step.shape[0], averaged if fitted is None else fitted)
    log.info("posterior: step size of the draws %s (%s over warm-up transitions %d-%d; dual averaging's %.3g)",
             np.array2string(chosen, precision=3), "no fall of the acceptance with the step" if fitted is None else
             f"acceptance {target:g} on its curve in the step", start + 1, end, averaged)
    step = arrays.step.at[:, end:].set(jnp.asarray(chosen, arrays.step.dtype)[:, None])
    return eqx.tree_at(lambda c: c.step, arrays, step)


def _metric_range(metric: Metric) -> tuple[float, float, float, float]:
    sd = np.sqrt(np.sum(np.asarray(metric.factor) ** 2, 1))
    scale = np.asarray(metric.scale)
    return (float(sd.min()), float(sd.max()), *((float(scale.min()), float(scale.max())) if scale.size else (1.0, 1.0)))


def _directions(metric: Metric) -> str:
    stretch = np.asarray(metric.stretch)
    used = stretch[stretch != 0]
    return f"; {used.size} direction(s) over all coordinates stretched to sd {np.array2string(1 + used, precision=2)}" \
        if used.size else ""


@dataclass
class Posterior:
    """NUTS draws of the flat free entries `draws` (chains, draws, D) and what the sampler did."""

    names: list[str]  # the globals' names (`Laplace.names`)
    global_index: np.ndarray
    region_index: np.ndarray  # (R, E)
    region_effects: list[str]
    draws: np.ndarray  # (C, S, D) unconstrained, flat as `ravel_pytree` of the free estimate
    natural: np.ndarray  # (C, S, P) the free parameters on the natural scale
    log_density: np.ndarray  # (C, S)
    divergent: np.ndarray  # (C, S) bool
    leapfrogs: np.ndarray  # (C, S)
    acceptance: np.ndarray  # (C, S) each draw's mean acceptance probability
    warmup_divergent: int
    step_size: np.ndarray  # (C,)
    curvature: np.ndarray  # the leading eigenvalues of the Laplace-whitened curvature
    seconds: float

    @property
    def parameter_names(self) -> list[str]:
        return self.names[: self.natural.shape[-1]]


def sampler_density(calibration: Calibration, data: Dataset, config: NutsConfig):
    """What NUTS samples for `calibration`: `(coords, whiten, curvature, density)`, the sampler's
    coordinates, their whitening and the curvature eigenvalues it found, and the log density of
    `w` with the simulation in `config.simulation_precision`."""
    coords = coordinates(calibration, centre_national=config.centre_national)
    whiten, curvature = whitening(calibration, data, coords, rank=config.rank)
    density = coords.density(whiten, data, calibration_prior(calibration.config), jnp.dtype(config.simulation_precision))
    return coords, whiten, curvature, density


def sample_posterior(calibration: Calibration, data: Dataset, config: NutsConfig, *, checkpoint: Path | None = None,
                     progress: bool = True, mesh: Mesh | None = None) -> Posterior:
    """Run `config.chains` NUTS chains from the Laplace approximation of `calibration`: a warm-up of
    `config.warmup` steps, then `config.draws` draws each, checkpointed every `config.block`; with
    `mesh` (`sharding.chain_mesh`) the chains split over its devices."""
    blackjax = require_sampler()
    started = time.perf_counter()
    coords, whiten, curvature, density = sampler_density(calibration, data, config)
    log.info("posterior: Laplace-whitened curvature, leading eigenvalues %s (%d corrected), %.0f s",
             np.array2string(curvature[:6], precision=1), int(whiten.correction.shape[0]), time.perf_counter() - started)
    free, fixed = eqx.partition(calibration.estimate, calibration.mask)
    flat, unravel = ravel_pytree(free)
    dim, chains, dtype, total = flat.size, config.chains, flat.dtype, config.warmup + config.draws
    kernel = blackjax.nuts.build_kernel()
    restart, da_update, da_final = step_adaptation(config, dtype)
    key_start, key_steps = jax.random.split(jax.random.key(config.seed))
    # starts near the MAP (a tenth of the corrected Laplace spread apart): started from full Laplace
    # draws on the metros, the chains' first transitions ran to the tree-depth limit for minutes
    starts = START_SPREAD * jax.random.normal(key_start, (chains, dim), dtype)
    num_global = int(whiten.global_index.shape[0])
    windows = _windows(config)
    arrays = initial_chains(config, starts, num_global)
    resumed = load_checkpoint(checkpoint, arrays)
    arrays, done = (arrays, 0) if resumed is None else (resumed[0], resumed[1]["step"])
    arrays = shard_chains(arrays, mesh, _by_chain)

    @eqx.filter_jit
    def block(keys, arrays, first, adapt, doublings):
        """`keys` (C, n): n transitions of every chain from transition `first`. `adapt` (traced, so
        that the warm-up and the draws share one program): tune the step, keep the positions in `w`
        for the metric; else keep the draws. `doublings` (static): the tree limit."""
        def log_density(v):
            return density(arrays.metric(v))

        def transition(carry, ks):  # one transition of every chain, `ks` (C,) keys
            def chain(k, state, step_size):
                state, info = kernel(k, state, log_density, step_size, jnp.ones(dim, dtype), doublings)
                record = (info.is_divergent, info.num_integration_steps, info.acceptance_rate, step_size)
                w = arrays.metric(state.position)
                y = whiten(w)  # a draw's entries, and its log joint density (without the log Jacobian of y)
                kept = jnp.where(adapt, w, coords.entries(y).astype(w.dtype))
                return state, (kept, state.logdensity - coords.log_jacobian(y), *record)

            states, da = carry
            states, out = jax.vmap(chain)(ks, states, jnp.where(adapt, jnp.exp(da.log_step_size), drawn_steps))
            *_, acceptance, _ = out  # the record's acceptance (C,); one dual averaging for all chains, on their mean
            da = jax.tree_util.tree_map(lambda new, old: jnp.where(adapt, new, old), da_update(da, jnp.mean(acceptance)), da)
            return (states, da), out

        drawn_steps = jax.lax.dynamic_index_in_dim(arrays.step, first, 1, keepdims=False)  # (C,) the draws' step sizes
        states = jax.vmap(lambda v: blackjax.nuts.init(v, log_density))(arrays.position)
        (state, da), out = jax.lax.scan(transition, (states, arrays.adaptation), jnp.swapaxes(keys, 0, 1))
        x, logp, *record = (jnp.swapaxes(a, 0, 1) for a in out)  # (C, block, ...)

        def put(old, new, at=first):  # at transitions `at` on; where `at` is out of range (the other phase), nothing
            index = at + jnp.arange(new.shape[1])
            return old.at[:, index].set(new.astype(old.dtype), mode="drop")

        past = total + keys.shape[1]  # out of range of every record
        recorded = (arrays.divergent, arrays.leapfrogs, arrays.acceptance, arrays.step)
        at_draw = jnp.where(adapt, past, first - config.warmup)
        return eqx.tree_at(lambda c: (c.position, c.adaptation, c.divergent, c.leapfrogs, c.acceptance, c.step, c.warm,
                                      c.draws, c.log_density), arrays,
                           (state.position, da, *map(put, recorded, record), put(arrays.warm, x, jnp.where(adapt, first, past)),
                            put(arrays.draws, x, at_draw), put(arrays.log_density, logp, at_draw)))

    phases = (("warm-up", 0, config.warmup, "transition"), ("draws", config.warmup, total, "draw"))
    seconds = 0.0
    for name, begin, end, unit in phases:
        if done >= end:
            continue
        progress_bar = Progress(f"posterior: NUTS {name}", end - begin, enabled=progress, initial=done - begin, unit=unit)
        while done < end:
            size = min(config.block, end - done)
            keys = jax.vmap(lambda k: jax.random.split(k, size))(jax.random.split(jax.random.fold_in(key_steps, done), chains))
            keys = shard_chains(keys, mesh)
            doublings = config.early_doublings if windows and done < min(windows) else config.max_doublings
            arrays = block(keys, arrays, jnp.asarray(done), jnp.asarray(name == "warm-up"), doublings)  # one program a limit
            done += size
            if done in windows:
                arrays = shard_chains(_adapt_metric(arrays, windows[done], done, num_global, restart, da_final), mesh, _by_chain)
            if done == config.warmup and name == "warm-up":  # the draws' step, from the warm-up's last stretch
                arrays = shard_chains(_draw_step(arrays, max(windows, default=config.warmup // 2), done,
                                                 config.target_acceptance, da_final), mesh, _by_chain)
            if checkpoint is not None:
                save_checkpoint(checkpoint, arrays, dict(step=done))
            recent = np.asarray(arrays.leapfrogs[:, done - size:done])
            progress_bar.update(done - begin, divergent=int(np.sum(arrays.divergent[:, begin:done])),
                                leapfrogs=f"{recent.mean():.0f}",
                                step=np.array2string(np.asarray(arrays.step[:, done - 1]), precision=3),
                                acceptance=f"{float(np.mean(arrays.acceptance[:, done - size:done])):.2f}")
        progress_bar.close(f"{int(np.sum(arrays.divergent[:, begin:end]))} divergent transitions, "
                           f"{float(np.mean(arrays.leapfrogs[:, begin:end])):.1f} leapfrog steps each")
        seconds += progress_bar.seconds
    if windows:
        log.info("posterior: metric of the draws: sd of the globals' coordinates %.2g-%.2g, of the regions' %.2g-%.2g "
                 "(1 where the Laplace whitening is right)%s", *_metric_range(arrays.metric), _directions(arrays.metric))
    draws, lp = arrays.draws, arrays.log_density
    divergent, leapfrogs = arrays.divergent[:, config.warmup:], arrays.leapfrogs[:, config.warmup:]
    step_size, acceptance = arrays.step[:, config.warmup], arrays.acceptance[:, config.warmup:]
    warmup_divergent = int(jnp.sum(arrays.divergent[:, :config.warmup]))

    gi, ri, names, region_names = _layout(free)

    @jax.jit
    @jax.vmap
    def natural(x):
        return free_natural(eqx.combine(unravel(x), fixed), free)

    values = np.asarray(natural(draws.reshape(-1, dim))).reshape(chains, config.draws, -1)
    return Posterior(names, gi, ri, region_names, np.asarray(draws), values, np.asarray(lp), np.asarray(divergent),
                     np.asarray(leapfrogs), np.asarray(acceptance), warmup_divergent, np.asarray(step_size), curvature, seconds)
