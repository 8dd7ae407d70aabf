"""Where NUTS moves: the sampler's coordinates and the metric learnt in its warm-up (`posterior.py`).

NUTS runs on `w`, which a linear map takes to the sampler's entries `y`:

    y = centre + L (I + V diag(lambda^-1/2 - 1) V^T) w

`y` is `x`, the free entries of an estimate, with the national effects eta_t in place of their
innovations eps_t (`Coordinates`). The counts of a thousand regions pin each year's eta_t; eps_t
= (zeta_t - phi zeta_{t-1}) / sigma (`effects.national_innovations`) is then pinned only jointly
with the persistence phi and the scale sigma, along a ridge that bends as they move. On the US
metros, at the four chains' positions after 25 warm-up transitions, the curvature's leading
eigenvalues in the whitened coordinates were 65-844, and at the two stiffest positions (844 and
426) the direction was persistence and innovations together; with eta_t sampled they were
64-103, the buzz scale against the patents intercept, a linear trade-off that the metric learnt
in the warm-up takes up (`experiments/posterior/README.md`). The map from `y` to `x` is nonlinear, so the density of
`y` adds its log Jacobian (-T log sigma). `L` maps standard normal draws to draws of the
Laplace approximation (`laplace.sample`: the globals by their marginal covariance, each region's
effects by its conditional given them), carried to `y` by the map's Jacobian at the Laplace mean.
The bracket corrects the stiffest directions: the Laplace precision is the Gauss-Newton one,
which leaves out the dynamics' second-order terms, and on the US metros the exact curvature
along one direction (mostly the buzz-quality scale) was 451-513 times the Laplace one, which
forced a step of about 0.05. `(lambda_i, v_i)` are the leading eigenpairs of the exact negative
Hessian in Laplace coordinates at the MAP (subspace iteration on Hessian-vector products), kept
where lambda_i > 1. The bracket and `L` are linear, so the density of `w` is that of `y` up to a
constant.

The metric (`Metric`, `window_metric`): dense over the globals' coordinates, the first G of `w`,
and a scale per region coordinate, learnt from the warm-up's draws (`posterior.py` says when).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .calibrate import Calibration, calibration_prior
from .effects import Estimate, national_effects, national_innovations
from .errors import ConfigError
from .laplace import _layout
from .loss import Prior, log_joint

if TYPE_CHECKING:
    from .data import Dataset


class Coordinates(eqx.Module):
    """The flat free entries `x` of an estimate and the sampler's entries `y`: the same, except
    that `y` holds the national effects eta_t where `x` holds their innovations eps_t (none:
    `y = x`)."""

    unravel: object = eqx.field(static=True)  # x -> the free part of an estimate
    fixed: Estimate
    year_index: jax.Array  # (T,) where the innovations sit in `x`; (0,) to sample them as they are

    def _natural(self, x: jax.Array):
        return eqx.combine(self.unravel(x), self.fixed).params.natural()  # the year entries do not enter

    def centred(self, x: jax.Array) -> jax.Array:
        """`x` to `y`."""
        if not self.year_index.size:
            return x
        return x.at[self.year_index].set(national_effects(self._natural(x), x[self.year_index]))

    def entries(self, y: jax.Array) -> jax.Array:
        """`y` to `x`."""
        if not self.year_index.size:
            return y
        return y.at[self.year_index].set(national_innovations(self._natural(y), y[self.year_index]))

    def log_jacobian(self, y: jax.Array) -> jax.Array:
        """log |dx/dy| = -T log sigma: each eps_t is (eta_t - ...) / sigma, the rest unchanged."""
        if not self.year_index.size:
            return jnp.zeros((), y.dtype)
        return -self.year_index.shape[0] * jnp.log(self._natural(y).national_shock_scale)

    def log_density(self, y: jax.Array, data: Dataset, prior: Prior, precision=None) -> jax.Array:
        """The log density of the sampler's entries `y`: `log_joint` at `x(y)` plus the log
        Jacobian; `precision`: that of the simulation (`loss.expected_patents`)."""
        return (log_joint(eqx.combine(self.unravel(self.entries(y)), self.fixed), data, prior, precision)
                + self.log_jacobian(y))

    def density(self, whiten: Whitening, data: Dataset, prior: Prior, precision=None):
        """The log density of the NUTS coordinates `w` (`log_density` at `y = whiten(w)`)."""
        return lambda w: self.log_density(whiten(w), data, prior, precision)


def coordinates(calibration: Calibration, *, centre_national: bool = True) -> Coordinates:
    """The `Coordinates` of a calibration's free entries; `centre_national=False`: `y = x`."""
    free, fixed = eqx.partition(calibration.estimate, calibration.mask)
    _, unravel = ravel_pytree(free)
    gi, _, names, _ = _layout(free)
    years = [i for i, name in zip(gi, names) if name.startswith("national_innovation[")] if centre_national else []
    return Coordinates(unravel, fixed, jnp.asarray(np.asarray(years, int)))


def along(v: jax.Array, directions: jax.Array, by: jax.Array) -> jax.Array:
    """`v + U diag(by) U^T v` for orthonormal `directions` U (D, K), on the last axis of `v`: each
    direction's component of `v` scaled by 1 + `by`."""
    return v + jnp.einsum("dk,...k->...d", directions, by * jnp.einsum("dk,...d->...k", directions, v))


class Whitening(eqx.Module):
    """The linear map from NUTS coordinates `w` (D,) to the sampler's entries `y` (`Coordinates`)."""

    centre: jax.Array  # (D,) the Laplace mean, in `y`
    global_index: jax.Array  # (G,)
    region_index: jax.Array  # (R, E)
    global_factor: jax.Array  # (G, G) the map's Jacobian times the Cholesky factor of the globals' covariance in `x`
    shift: jax.Array  # (G, R, E) a region's conditional mean per unit of the globals' deviation in `y`
    region_factor: jax.Array  # (R, E, E) Cholesky factors of the regions' conditional covariances
    directions: jax.Array  # (D, k) corrected eigen-directions, orthonormal
    correction: jax.Array  # (k,) lambda^-1/2 - 1

    def laplace_map(self, u: jax.Array) -> jax.Array:
        """Standard normal `u` to a Laplace draw of `y` (to first order where `y` is not `x`)."""
        num_global = self.global_index.shape[0]
        deviation = self.global_factor @ u[:num_global]
        x = self.centre.at[self.global_index].add(deviation)
        if self.region_index.size:
            z = u[num_global:].reshape(self.region_index.shape)
            regional = jnp.einsum("gre,g->re", self.shift, deviation) + jnp.einsum("ref,rf->re", self.region_factor, z)
            x = x.at[self.region_index].add(regional)
        return x

    def __call__(self, w: jax.Array) -> jax.Array:
        return self.laplace_map(along(w, self.directions, self.correction))


def whitening(calibration: Calibration, data: Dataset, coords: Coordinates, *, rank: int, iterations: int = 15
              ) -> tuple[Whitening, np.ndarray]:
    """The `Whitening` of a calibration: its Laplace approximation in the sampler's entries `y`
    of `coords`, corrected along the `rank` leading eigen-directions of the exact curvature.
    **Returns:** it and the eigenvalues found."""
    approx = calibration.laplace
    if not approx.positive_definite:
        raise ConfigError("inference=nuts starts from the Laplace approximation, which is not positive definite here "
                          "(params.csv has no standard errors): fix the calibration first")
    free = eqx.partition(calibration.estimate, calibration.mask)[0]
    flat = ravel_pytree(free)[0]
    gi, ri, _, _ = _layout(free)
    centre = np.asarray(flat).copy()
    centre[gi] = approx.mean
    inverse = np.linalg.inv(approx.region_precision) if ri.size else np.zeros((ri.shape[0], 0, 0))
    if ri.size:
        centre[ri] = approx.region_mean
    dtype = flat.dtype
    # the Laplace approximation carried from x to y by the map's Jacobian on the globals at its mean
    x = jnp.asarray(centre, dtype)
    jacobian = np.asarray(jax.jacfwd(lambda g: coords.centred(x.at[gi].set(g))[gi])(x[gi]))
    # per unit of the globals' deviation in x
    shift = -approx.region_solve(approx.cross) if ri.size else np.zeros((len(gi), *ri.shape))
    base = Whitening(coords.centred(x), jnp.asarray(gi), jnp.asarray(ri),
                     jnp.asarray(jacobian @ np.linalg.cholesky(approx.covariance), dtype),
                     jnp.asarray(np.einsum("gh,gre->hre", np.linalg.inv(jacobian), shift), dtype),
                     jnp.asarray(np.linalg.cholesky(inverse) if ri.size else inverse, dtype), jnp.zeros((flat.size, 0), dtype),
                     jnp.zeros(0, dtype))
    density = coords.density(base, data, calibration_prior(calibration.config))
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


class Metric(eqx.Module):
    """`w = metric(v)`: a dense factor over the first G coordinates (the globals) and a scale on
    each of the others (the region effects), after a stretch along a few directions over all
    coordinates (`directions`, orthonormal, each stretched by 1 + `stretch`; zero stretch: unused).
    The identity at the start of the warm-up."""

    factor: jax.Array  # (G, G) lower triangular
    scale: jax.Array  # (D - G,)
    directions: jax.Array  # (D, K)
    stretch: jax.Array  # (K,)

    @classmethod
    def identity(cls, num_global: int, dim: int, dtype, rank: int = 0) -> Metric:
        return cls(jnp.eye(num_global, dtype=dtype), jnp.ones(dim - num_global, dtype), jnp.zeros((dim, rank), dtype),
                   jnp.zeros(rank, dtype))

    def __call__(self, v: jax.Array) -> jax.Array:
        num_global = self.factor.shape[0]
        v = along(v, self.directions, self.stretch)
        return jnp.concatenate([jnp.einsum("gh,...h->...g", self.factor, v[..., :num_global]),
                                self.scale * v[..., num_global:]], -1)

    def inverse(self, w: jax.Array) -> jax.Array:
        num_global = self.factor.shape[0]
        head = jax.scipy.linalg.solve_triangular(self.factor, w[..., :num_global].reshape(-1, num_global).T, lower=True).T
        v = jnp.concatenate([head.reshape(w[..., :num_global].shape), w[..., num_global:] / self.scale], -1)
        return along(v, self.directions, 1.0 / (1.0 + self.stretch) - 1.0)


SHRINKAGE = 5.0
"""The window covariance is (n / (n + SHRINKAGE)) times the sample covariance of its n draws plus
(SHRINKAGE / (n + SHRINKAGE)) times the identity: Stan's regularisation, towards the identity
because `w` is already whitened by the Laplace approximation."""

NOISE_MARGIN = 3.0
"""A direction over all coordinates joins the metric where the draws' variance along it, after
the dense-and-per-coordinate part, exceeds NOISE_MARGIN times the largest that n independent
draws of D standard normal coordinates give by chance, (1 + sqrt(D / n))^2 (the Marchenko-Pastur
edge). Draws of a Markov chain are correlated, which spreads the chance eigenvalues further: on
the US metros the bulk ran to 1.5-2.5 times the edge, and one direction stood 4-30 times above it
in every window (`posterior.py`)."""


def window_metric(draws: np.ndarray, num_global: int, rank: int = 0) -> Metric:
    """The metric of one adaptation window from its draws of `w`, (chains, n, D) pooled over the
    chains: the shrunk covariance of the first `num_global` coordinates, dense, and the shrunk
    variance of each of the others; then, up to `rank` directions over all coordinates along which
    the draws still spread more than chance allows (`NOISE_MARGIN`), each stretched to the draws'
    shrunk sd along it."""
    flat = np.asarray(draws, np.float64).reshape(-1, draws.shape[-1])
    (n, dim), dtype = flat.shape, draws.dtype
    centred = flat - flat.mean(0)
    weight = n / (n + SHRINKAGE)
    head = centred[:, :num_global]
    covariance = weight * (head.T @ head) / max(n - 1, 1) + (1 - weight) * np.eye(num_global)
    variance = weight * np.sum(centred[:, num_global:] ** 2, 0) / max(n - 1, 1) + (1 - weight)
    block = Metric(jnp.asarray(np.linalg.cholesky(covariance)), jnp.asarray(np.sqrt(variance)),
                   jnp.zeros((dim, rank)), jnp.zeros(rank))
    directions, stretch = np.zeros((dim, rank)), np.zeros(rank)
    if rank and n > 1:
        v = np.asarray(block.inverse(jnp.asarray(centred)))
        _, singular, rows = np.linalg.svd(v / np.sqrt(n - 1), full_matrices=False)
        spread = singular[:rank] ** 2
        keep = spread > NOISE_MARGIN * (1 + np.sqrt(dim / n)) ** 2
        directions[:, :keep.sum()] = rows[:rank][keep].T
        stretch[:keep.sum()] = np.sqrt(weight * spread[keep] + 1 - weight) - 1
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype),
                                  eqx.tree_at(lambda m: (m.directions, m.stretch), block, (directions, stretch)))
