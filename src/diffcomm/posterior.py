"""The full posterior of a calibration by NUTS (BlackJAX), started at the MAP.

What is sampled: the joint posterior of the free parameters, the standardized region effects and
the national innovations, with the likelihood and priors of the MAP (`loss.log_joint`). The MAP's
objective adds the Laplace-marginal term for the latent effects (`loss.latent_curvature`); NUTS
integrates over the effects instead, so that term is not part of the density sampled.

Coordinates. NUTS runs on `w`, a linear reparameterisation of the free entries `x` of an estimate:

    x = centre + L (I + V diag(lambda^-1/2 - 1) V^T) w

`L` maps standard normal draws to draws of the Laplace approximation (`laplace.sample`: the globals
by their marginal covariance, each region's effects by its conditional given them). The bracket
corrects the stiffest directions: the Laplace precision is the Gauss-Newton one, which leaves out
the dynamics' second-order terms, and on the US metros the exact curvature along one direction
(mostly the buzz-quality scale) was 513 times the Laplace one, which forced a step of about 0.05.
`(lambda_i, v_i)` are the leading eigenpairs of the exact negative Hessian in Laplace coordinates
at the MAP (subspace iteration on Hessian-vector products), kept where lambda_i > 1. The map is
linear, so the density of `w` is that of `x` up to a constant. In `w` the mass matrix is the
identity (the whitening is the metric: dense in the globals, per region in the effects); the
warm-up tunes each chain's step size by dual averaging towards an acceptance of 0.8 (Stan's
scheme, BlackJAX's implementation). BlackJAX's window adaptation, which also re-estimates a
diagonal mass matrix from the warm-up draws, ran for over 20 minutes on the metros without
finishing its 300 warm-up steps.

Chains are one `vmap`. Warm-up and draws run in blocks of `nuts.block` transitions, each block
checkpointed (a rerun resumes) and reported. BlackJAX and ArviZ are the `posterior` extra.
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
from .loss import Prior, log_joint
from .training import Progress, load_checkpoint, log, save_checkpoint

if TYPE_CHECKING:
    from .data import Dataset


def require_sampler():
    """BlackJAX, or a `ConfigError` saying how to install it (checked before a calibration starts)."""
    try:
        import blackjax
    except ImportError:  # an optional extra
        raise ConfigError("inference=nuts needs BlackJAX and ArviZ: pip install -e '.[posterior]'") from None
    return blackjax


class Whitening(eqx.Module):
    """The linear map from NUTS coordinates `w` (D,) to the flat free entries of an estimate."""

    centre: jax.Array  # (D,) the Laplace mean
    global_index: jax.Array  # (G,)
    region_index: jax.Array  # (R, E)
    global_factor: jax.Array  # (G, G) Cholesky factor of the globals' marginal covariance
    shift: jax.Array  # (G, R, E) a region's conditional mean per unit of global deviation
    region_factor: jax.Array  # (R, E, E) Cholesky factors of the regions' conditional covariances
    directions: jax.Array  # (D, k) corrected eigen-directions, orthonormal
    correction: jax.Array  # (k,) lambda^-1/2 - 1

    def laplace_map(self, u: jax.Array) -> jax.Array:
        """Standard normal `u` to a Laplace draw of the flat entries."""
        num_global = self.global_index.shape[0]
        deviation = self.global_factor @ u[:num_global]
        x = self.centre.at[self.global_index].add(deviation)
        if self.region_index.size:
            z = u[num_global:].reshape(self.region_index.shape)
            regional = jnp.einsum("gre,g->re", self.shift, deviation) + jnp.einsum("ref,rf->re", self.region_factor, z)
            x = x.at[self.region_index].add(regional)
        return x

    def __call__(self, w: jax.Array) -> jax.Array:
        return self.laplace_map(w + self.directions @ (self.correction * (self.directions.T @ w)))


def whitening(calibration: Calibration, data: Dataset, *, rank: int, iterations: int = 15) -> tuple[Whitening, np.ndarray]:
    """The `Whitening` of a calibration: its Laplace approximation, corrected along the `rank`
    leading eigen-directions of the exact curvature. **Returns:** it and the eigenvalues found."""
    approx = calibration.laplace
    if not approx.positive_definite:
        raise ConfigError("inference=nuts starts from the Laplace approximation, which is not positive definite here "
                          "(params.csv has no standard errors): fix the calibration first")
    free, fixed = eqx.partition(calibration.estimate, calibration.mask)
    flat, unravel = ravel_pytree(free)
    gi, ri, _, _ = _layout(free)
    centre = np.asarray(flat).copy()
    centre[gi] = approx.mean
    inverse = np.linalg.inv(approx.region_precision) if ri.size else np.zeros((ri.shape[0], 0, 0))
    if ri.size:
        centre[ri] = approx.region_mean
    dtype = flat.dtype
    base = Whitening(jnp.asarray(centre, dtype), jnp.asarray(gi), jnp.asarray(ri),
                     jnp.asarray(np.linalg.cholesky(approx.covariance), dtype),
                     jnp.asarray(-np.einsum("ref,grf->gre", inverse, approx.cross), dtype),
                     jnp.asarray(np.linalg.cholesky(inverse) if ri.size else inverse, dtype), jnp.zeros((flat.size, 0), dtype),
                     jnp.zeros(0, dtype))
    prior = calibration_prior(calibration.config)
    density = _density(base, unravel, fixed, data, prior)
    rank = min(rank, flat.size)
    curvature = jax.jit(jax.vmap(lambda v: -jax.jvp(jax.grad(density), (jnp.zeros(flat.size, dtype),), (v,))[1]))
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(flat.size, rank)))[0]
    for _ in range(iterations):  # subspace iteration: the leading eigen-space of the curvature
        q = np.linalg.qr(np.asarray(curvature(jnp.asarray(q.T, dtype))).T)[0]
    small = q.T @ np.asarray(curvature(jnp.asarray(q.T, dtype))).T
    values, vectors = np.linalg.eigh(0.5 * (small + small.T))
    keep = values > 1.0
    directions = q @ vectors[:, keep]
    return eqx.tree_at(lambda m: (m.directions, m.correction), base,
                       (jnp.asarray(directions, dtype), jnp.asarray(values[keep] ** -0.5 - 1.0, dtype))), values[::-1]


def _density(whiten: Whitening, unravel, fixed, data: Dataset, prior: Prior):
    def density(w):
        return log_joint(eqx.combine(unravel(whiten(w)), fixed), data, prior)

    return density


TARGET_ACCEPTANCE = 0.8  # of the step size's dual averaging in the warm-up (Stan's default)
INITIAL_STEP = 0.02
"""The warm-up's first step size. Dual averaging centres its search on 10x this (Hoffman & Gelman's
mu); from 0.1 the first transitions on the metros tried steps near 1, diverged, and the average
fell to 0.005-0.08 with 144 leapfrog steps a transition."""
START_SPREAD = 0.1  # the chains' starts: the MAP plus this many corrected-Laplace sds of noise


class _Chains(eqx.Module):
    """What the chains carry between blocks (and checkpoints): positions, each chain's step-size
    adaptation, the draws so far, and every transition's divergence and tree size."""

    position: jax.Array  # (C, D) in NUTS coordinates
    adaptation: object  # BlackJAX's dual-averaging state, leaves (C,)
    draws: jax.Array  # (C, S, D) flat free entries
    log_density: jax.Array  # (C, S)
    divergent: jax.Array  # (C, warm-up + S)
    leapfrogs: jax.Array  # (C, warm-up + S)


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
    warmup_divergent: int
    step_size: np.ndarray  # (C,)
    curvature: np.ndarray  # the leading eigenvalues of the Laplace-whitened curvature
    seconds: float

    @property
    def parameter_names(self) -> list[str]:
        return self.names[: self.natural.shape[-1]]


def sample_posterior(calibration: Calibration, data: Dataset, config: NutsConfig, *, checkpoint: Path | None = None,
                     progress: bool = True) -> Posterior:
    """Run `config.chains` NUTS chains from the Laplace approximation of `calibration`: a warm-up of
    `config.warmup` steps, then `config.draws` draws each, checkpointed every `config.block`."""
    blackjax = require_sampler()
    from blackjax.adaptation.step_size import dual_averaging_adaptation
    started = time.perf_counter()
    whiten, curvature = whitening(calibration, data, rank=config.rank)
    log.info("posterior: Laplace-whitened curvature, leading eigenvalues %s (%d corrected), %.0f s",
             np.array2string(curvature[:6], precision=1), int(whiten.correction.shape[0]), time.perf_counter() - started)
    free, fixed = eqx.partition(calibration.estimate, calibration.mask)
    flat, unravel = ravel_pytree(free)
    density = _density(whiten, unravel, fixed, data, calibration_prior(calibration.config))
    dim, chains, dtype, total = flat.size, config.chains, flat.dtype, config.warmup + config.draws
    kernel = blackjax.nuts.build_kernel()
    da_init, da_update, da_final = dual_averaging_adaptation(TARGET_ACCEPTANCE)
    key_start, key_steps = jax.random.split(jax.random.key(config.seed))
    # starts near the MAP (a tenth of the corrected Laplace spread apart): started from full Laplace
    # draws on the metros, the chains' first transitions ran to the tree-depth limit for minutes
    starts = START_SPREAD * jax.random.normal(key_start, (chains, dim), dtype)
    arrays = _Chains(starts, jax.vmap(lambda _: jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), da_init(INITIAL_STEP)))(
        jnp.arange(chains)), jnp.zeros((chains, config.draws, dim), dtype), jnp.zeros((chains, config.draws), dtype),
        jnp.zeros((chains, total), bool), jnp.zeros((chains, total), jnp.int32))
    resumed = load_checkpoint(checkpoint, arrays)
    arrays, done = (arrays, 0) if resumed is None else (resumed[0], resumed[1]["step"])

    @eqx.filter_jit
    def block(keys, arrays, first, adapt):  # `adapt` static: warm-up steps tune the step size
        def chain(ks, w, da):
            def one(carry, k):
                state, da = carry
                step_size = jnp.exp(da.log_step_size) if adapt else da_final(da)
                state, info = kernel(k, state, density, step_size, jnp.ones(dim, dtype), config.max_doublings)
                da = da_update(da, info.acceptance_rate) if adapt else da
                return (state, da), (whiten(state.position), state.logdensity, info.is_divergent, info.num_integration_steps)

            return jax.lax.scan(one, (blackjax.nuts.init(w, density), da), ks)

        (state, da), (x, logp, div, steps) = jax.vmap(chain)(keys, arrays.position, arrays.adaptation)
        out = eqx.tree_at(lambda c: (c.position, c.adaptation, c.divergent, c.leapfrogs), arrays,
                          (state.position, da, jax.lax.dynamic_update_slice_in_dim(arrays.divergent, div, first, 1),
                           jax.lax.dynamic_update_slice_in_dim(arrays.leapfrogs, steps.astype(arrays.leapfrogs.dtype), first, 1)))
        if not adapt:
            at = first - config.warmup
            out = eqx.tree_at(lambda c: (c.draws, c.log_density), out,
                              (jax.lax.dynamic_update_slice_in_dim(arrays.draws, x, at, 1),
                               jax.lax.dynamic_update_slice_in_dim(arrays.log_density, logp, at, 1)))
        return out

    phases = (("warm-up", 0, config.warmup, "transition"), ("draws", config.warmup, total, "draw"))
    seconds = 0.0
    for name, begin, end, unit in phases:
        if done >= end:
            continue
        progress_bar = Progress(f"posterior: NUTS {name}", end - begin, enabled=progress, initial=done - begin, unit=unit)
        while done < end:
            size = min(config.block, end - done)
            keys = jax.vmap(lambda k: jax.random.split(k, size))(jax.random.split(jax.random.fold_in(key_steps, done), chains))
            arrays = block(keys, arrays, jnp.asarray(done), name == "warm-up")  # `done` traced: one program
            done += size
            if checkpoint is not None:
                save_checkpoint(checkpoint, arrays, dict(step=done))
            recent = np.asarray(arrays.leapfrogs[:, done - size:done])
            progress_bar.update(done - begin, divergent=int(np.sum(arrays.divergent[:, begin:done])),
                                leapfrogs=f"{recent.mean():.0f}",
                                step=np.array2string(np.asarray(jax.vmap(da_final)(arrays.adaptation) if name == "draws" else
                                                                jnp.exp(arrays.adaptation.log_step_size)), precision=3))
        progress_bar.close(f"{int(np.sum(arrays.divergent[:, begin:end]))} divergent transitions, "
                           f"{float(np.mean(arrays.leapfrogs[:, begin:end])):.1f} leapfrog steps each")
        seconds += progress_bar.seconds
    draws, lp = arrays.draws, arrays.log_density
    divergent, leapfrogs = arrays.divergent[:, config.warmup:], arrays.leapfrogs[:, config.warmup:]
    step_size = jax.vmap(da_final)(arrays.adaptation)
    warmup_divergent = int(jnp.sum(arrays.divergent[:, :config.warmup]))

    gi, ri, names, region_names = _layout(free)

    @jax.jit
    @jax.vmap
    def natural(x):
        return free_natural(eqx.combine(unravel(x), fixed), free)

    values = np.asarray(natural(draws.reshape(-1, dim))).reshape(chains, config.draws, -1)
    return Posterior(names, gi, ri, region_names, np.asarray(draws), values, np.asarray(lp), np.asarray(divergent),
                     np.asarray(leapfrogs), warmup_divergent, np.asarray(step_size), curvature, seconds)
