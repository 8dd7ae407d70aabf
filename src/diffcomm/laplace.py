"""The Laplace approximation of a calibration's posterior, with its region block kept sparse.

The free quantities of an `Estimate` fall in two groups: the *global* ones (the free parameters
and the national year innovations, a few dozen) and the *region* ones (each region's latent
effects, R x E). The precision is the Fisher information of the likelihood (Gauss-Newton,
J^T W J over the fitted outputs, positive semi-definite by construction) plus the prior's
Hessian. The Jacobian is read by forward-mode products: one per global direction, and for the
region block one per effect (a graph colouring): regions touch each other only through the
cross-local ties and the international community, where one region's effect moves another's
outputs by a term of order 1/R, so the region block is read as block diagonal (E x E per
region), but for the national factor. That moves every region's expected count by the same
amount, the change of the model's total knowledge that one region's effect makes: summed over
regions these 1/R terms are of order 1, and without them the effects of all regions at once
stood in for the national drift (whose standard error came out three times the dense one's on
the metros). Its part is exact and of rank 2T (T fitted years), read by T reverse-mode
products, and enters through the Woodbury identity (`Laplace.region_solve`); it is built for the
free path, and left out with `data.one_step_ahead`, where each year's restart also carries the
factor into the region's own outputs. The global
marginal covariance is the inverse of the Schur complement, and a region's effects given the
globals are Gaussian with the region precision (the mean exact; the spread from the region's
own block, the national part left out there). Cost: G + E forward and T reverse products
instead of G + R E (tests compare it with the dense information).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .effects import REGION_EFFECTS, Effects, Estimate
from .loss import (
    NOISE_PARAMETERS,
    Prior,
    fisher_weights,
    fitted_outputs,
    free_path,
    negative_log_posterior,
    negative_log_prior,
    region_outputs,
)
from .params import PARAMETERS, POSITIVE, UNIT, free_mask

if TYPE_CHECKING:
    from .data import Dataset


def fitted_parameters(free: list[str] | tuple[str, ...], region_effects=REGION_EFFECTS) -> tuple[str, ...]:
    """The names of `free` that a fit estimates: all but the scale `<name>_scale` of a region effect
    that is not fitted, which nothing but its prior would inform (it stays at its value)."""
    unfitted = {f"{name}_scale" for name in REGION_EFFECTS if name not in region_effects}
    return tuple(name for name in free if name not in unfitted)


def estimate_mask(estimate: Estimate, free: list[str] | tuple[str, ...], region_effects=REGION_EFFECTS,
                  national_effects: bool = True) -> Estimate:
    """A filter spec for `eqx.partition`: the named parameters (`fitted_parameters`), the named
    region effects, and the national year innovations if `national_effects`."""
    effects = Effects(*(name in region_effects for name in REGION_EFFECTS), year=national_effects)
    return Estimate(free_mask(estimate.params, fitted_parameters(free, region_effects)), effects)


@dataclass
class Laplace:
    """Gaussian approximation at the optimum, on the unconstrained scale.

    Global block (G): `names`, `mean`, `covariance` (marginal), and for the free parameters their
    natural values with delta-method standard errors. Region block: per region its standardized
    effects' mean (R, E), the block of the Hessian that is their conditional precision given the
    globals (R, E, E), and the cross block `cross` (G, R, E) that ties them to the globals.
    """

    names: list[str]  # one per global scalar, e.g. "critical_mass[0]" or "national_innovation[3]"
    mean: np.ndarray  # (G,) unconstrained
    covariance: np.ndarray  # (G, G) marginal, unconstrained scale
    natural: np.ndarray  # natural-scale values of the free parameters (the first len(natural) names)
    natural_se: np.ndarray  # their delta-method standard errors (NaN if not identified)
    positive_definite: bool
    region_effects: list[str]  # E names from REGION_EFFECTS
    region_mean: np.ndarray  # (R, E)
    region_precision: np.ndarray  # (R, E, E): each region's own block
    cross: np.ndarray  # (G, R, E)
    region_update: np.ndarray | None = None  # (R, E, 2T): U, the national part of the region precision, U K U^T
    region_core: np.ndarray | None = None  # (2T, 2T): (K^-1 + U^T D^-1 U)^-1, D the own blocks (Woodbury)

    @property
    def parameter_names(self) -> list[str]:
        return self.names[: len(self.natural)]

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Central intervals of the free parameters on the natural scale: the unconstrained interval
        mapped through each parameter's constraint, so a positive parameter's interval stays positive."""
        z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
        count = len(self.natural)
        mean = self.mean[:count]
        sd = np.sqrt(np.clip(np.diag(self.covariance)[:count], 0, None)) if self.positive_definite else np.full(count, np.nan)
        constraints = np.asarray([PARAMETERS[name.split("[")[0]].metadata["constraint"] for name in self.parameter_names])

        def natural(x):  # the constraints of params.to_natural, in float64 whatever JAX's precision
            return np.where(constraints == POSITIVE, np.logaddexp(0.0, x), np.where(constraints == UNIT, 1 / (1 + np.exp(-x)), x))

        with np.errstate(invalid="ignore"):  # NaN where the covariance is not usable
            return natural(mean - z * sd), natural(mean + z * sd)

    def region_solve(self, v: np.ndarray) -> np.ndarray:
        """The region precision's inverse times `v` (..., R, E): its own blocks D and its national
        part U K U^T, by the Woodbury identity."""
        return _region_solve(np.linalg.inv(self.region_precision), self.region_update, self.region_core, v)

    def region_sd(self) -> np.ndarray:
        """Marginal posterior sd of each region's standardized effects (R, E)."""
        if not self.positive_definite or not self.region_effects:
            return np.full(self.region_mean.shape, np.nan)
        inverse = np.linalg.inv(self.region_precision)
        conditional = inverse  # each region's block of H_zz^-1 (its own block, less the national part's Woodbury term)
        if self.region_update is not None:
            inverse_update = np.einsum("ref,rfk->rek", inverse, self.region_update)
            conditional = inverse - np.einsum("rek,kl,rfl->ref", inverse_update, self.region_core, inverse_update)
        shift = self.region_solve(self.cross)  # H_zz^-1 H_zg, (G, R, E)
        marginal = conditional + np.einsum("gre,gh,hrf->ref", shift, self.covariance, shift)
        return np.sqrt(np.clip(np.diagonal(marginal, axis1=1, axis2=2), 0, None))


def _region_solve(inverse: np.ndarray, update: np.ndarray | None, core: np.ndarray | None, v: np.ndarray) -> np.ndarray:
    """(D + U K U^T)^-1 v for v (..., R, E), given D^-1 (R, E, E), U (R, E, 2T) and the Woodbury core."""
    solved = np.einsum("ref,...rf->...re", inverse, v)
    if update is None:
        return solved
    inverse_update = np.einsum("ref,rfk->rek", inverse, update)
    return solved - np.einsum("rek,kl,...l->...re", inverse_update, core, np.einsum("rek,...re->...k", update, solved))


def _national_part(outputs, weights, factor: np.ndarray, cross: np.ndarray, inverse: np.ndarray, num_global: int):
    """The national factor's part of the Fisher information, which the colouring leaves out.

    Region r's effect e moves its own log count by s_ert (the coloured products) and every
    region's by f_ret = d factor_t / d z_re (`factor`, (T, R, E)). With W the count weights
    (T, R) and W_t their sum over regions, the region block gains U K U^T, U = [s W, f]
    (R, E, 2T), K = [[0, I], [I, diag W_t]], and the cross block with a global g gains
    sum_t G_gt f_ret, G_gt = sum_r J_gtr W_tr. **Returns:** the cross block with it, U, and
    the Woodbury core (K^-1 + U^T D^-1 U)^-1, D^-1 the own blocks' inverses `inverse`.
    """
    (patents, _), (w, _) = outputs, weights
    f = np.transpose(factor, (1, 2, 0))  # (R, E, T)
    update = np.concatenate([np.einsum("etr,tr->ret", patents[num_global:], w), f], axis=-1)
    cross = cross + np.einsum("gt,ret->gre", np.einsum("gtr,tr->gt", patents[:num_global], w), f)
    years = w.shape[0]
    k_inverse = np.block([[-np.diag(w.sum(axis=1)), np.eye(years)], [np.eye(years), np.zeros((years, years))]])
    core = k_inverse + np.einsum("rek,ref,rfl->kl", update, inverse, update)
    return cross, update, np.linalg.inv(core)


def _layout(free: Estimate) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Indices of the global entries (G,) and of the region entries (R, E) in `ravel_pytree(free)`,
    and the names of the global entries and of the region effects."""
    sizes, global_names, region_names = [], [], []
    for name in PARAMETERS:
        value = free.params.unconstrained[name]
        if value is not None:
            size = int(np.size(value))
            sizes.append(("global", size))
            global_names += [name] if np.ndim(value) == 0 else [f"{name}[{i}]" for i in range(size)]
    for name in REGION_EFFECTS:
        value = getattr(free.effects, name)
        if value is not None:
            sizes.append(("region", int(np.size(value))))
            region_names.append(name)
    if free.effects.year is not None:
        size = int(np.size(free.effects.year))
        sizes.append(("global", size))
        global_names += [f"national_innovation[{t + 1}]" for t in range(size)]
    offsets = np.cumsum([0] + [size for _, size in sizes])
    ranges = [(kind, np.arange(offsets[i], offsets[i + 1])) for i, (kind, _) in enumerate(sizes)]
    global_index = np.concatenate([r for kind, r in ranges if kind == "global"] or [np.zeros(0, int)])
    blocks = [r for kind, r in ranges if kind == "region"]
    region_index = np.stack(blocks, axis=1) if blocks else np.zeros((0, 0), int)
    return global_index, region_index, global_names, region_names


@eqx.filter_jit
def _information(free: Estimate, fixed: Estimate, data: Dataset, prior: Prior, global_index: jax.Array,
                 region_index: jax.Array, noise_index: jax.Array):
    """The blocks of the Fisher information (`_fisher_blocks`) from Jacobian-vector products of
    the fitted outputs along every global direction and one per region effect, plus the prior's
    Hessian and the observation noise parameters' own curvature; and the natural values of the
    free parameters with their Jacobian in the global directions; and the national factor's
    Jacobian in the region directions (T, R, E; `_national_part`), None without region effects
    or with `data.one_step_ahead`."""
    flat, unravel = ravel_pytree(free)
    size, num_global = flat.shape[0], global_index.shape[0]

    def at(x):
        return eqx.combine(unravel(x), fixed)

    tangents = [jnp.zeros((num_global, size)).at[jnp.arange(num_global), global_index].set(1.0)]
    for e in range(region_index.shape[1]):
        tangents.append(jnp.zeros((1, size)).at[0, region_index[:, e]].set(1.0))
    tangents = jnp.concatenate(tangents).astype(flat.dtype)
    outputs = jax.vmap(lambda v: jax.jvp(lambda x: fitted_outputs(at(x), data), (flat,), (v,))[1])(tangents[:num_global])
    if region_index.shape[1]:  # a region's own effects, without the national factor's 1/R terms (`loss.region_outputs`)
        own = jax.vmap(lambda v: jax.jvp(lambda x: region_outputs(at(x), data), (flat,), (v,))[1])(tangents[num_global:])
        outputs = jax.tree_util.tree_map(lambda g, r: jnp.concatenate([g, r]), outputs, own)
    weights = fisher_weights(at(flat), data)
    prior_gradient = jax.grad(lambda x: negative_log_prior(at(x), prior))
    prior_hessian = jax.vmap(lambda v: jax.jvp(prior_gradient, (flat,), (v,))[1])(tangents)
    posterior_gradient = jax.grad(lambda x: negative_log_posterior(at(x), data, prior))
    count = noise_index.shape[0]
    noise_tangents = jnp.zeros((count, size), flat.dtype).at[jnp.arange(count), noise_index].set(1.0)
    noise = jax.vmap(lambda v: jax.jvp(posterior_gradient, (flat,), (v,))[1])(noise_tangents)[jnp.arange(noise_index.shape[0]),
                                                                                                noise_index]

    def natural_values(g):
        return free_natural(at(flat.at[global_index].set(g)), free)

    def factor(x):  # the national factor: the part of every region's log expected count that is the same
        return free_path(at(x), data)[1]

    national = region_index.shape[1] and not data.one_step_ahead
    factor_jacobian = jax.jacrev(factor)(flat)[:, region_index] if national else None  # (T, R, E)
    g = flat[global_index]
    return flat, outputs, weights, prior_hessian, noise, natural_values(g), jax.jacfwd(natural_values)(g), factor_jacobian


def _fisher_blocks(outputs, weights, num_global: int):
    """J^T W J split into the global block (G, G), the cross block (G, R, E) and the region blocks
    (R, E, E), from the output Jacobians of the global directions and of the coloured region ones."""
    (patents, share), (w_patents, w_share) = outputs, weights
    gp, ep = patents[:num_global], patents[num_global:]
    gs, es = share[:num_global], share[num_global:]
    h_gg = np.einsum("gtr,htr,tr->gh", gp, gp, w_patents) + np.einsum("gr,hr,r->gh", gs, gs, w_share)
    cross = np.einsum("gtr,etr,tr->gre", gp, ep, w_patents) + np.einsum("gr,er,r->gre", gs, es, w_share)
    region = np.einsum("etr,ftr,tr->ref", ep, ep, w_patents) + np.einsum("er,fr,r->ref", es, es, w_share)
    return h_gg, cross, region


def laplace(estimate: Estimate, data: Dataset, prior: Prior, mask: Estimate) -> Laplace:
    """Laplace approximation of the posterior over the entries `mask` marks free (`estimate_mask`),
    at `estimate`, with the Fisher information (Gauss-Newton) in place of the Hessian of the
    likelihood: J^T W J over the fitted outputs (`loss.fitted_outputs`, `loss.fisher_weights`),
    positive semi-definite wherever the optimizer stopped, plus the prior's exact Hessian and the
    exact curvature of the observation noise parameters (orthogonal to the rest in the Fisher
    information). The latent curvature term of the objective is left out: it corrects the
    location of the scales, and its own curvature is of lower order.

    Where the result is still not positive definite (a direction the data and the prior leave
    flat) the covariance and the standard errors are NaN.
    """
    free, fixed = eqx.partition(estimate, mask)
    gi, ri, names, region_names = _layout(free)
    noise = [i for i, name in enumerate(names) if name in NOISE_PARAMETERS]
    flat, outputs, weights, prior_hessian, noise_curvature, natural, jacobian, factor = jax.tree_util.tree_map(
        lambda x: np.asarray(x, dtype=float),
        _information(free, fixed, data, prior, jnp.asarray(gi), jnp.asarray(ri), jnp.asarray(gi[noise], dtype=int)))
    num_global, (num_regions, num_effects) = len(gi), ri.shape
    h_gg, cross, precision = _fisher_blocks(outputs, weights, num_global)
    h_gg = h_gg + prior_hessian[:num_global][:, gi]
    h_gg[noise, noise] = noise_curvature
    h_gg = 0.5 * (h_gg + h_gg.T)
    if num_effects:
        precision = precision + np.stack([prior_hessian[num_global + e][ri] for e in range(num_effects)], axis=-1)
    blocks_ok = bool(np.all(np.linalg.eigvalsh(precision) > 0)) if num_effects else True
    update = core = None
    if num_effects and blocks_ok:
        inverse = np.linalg.inv(precision)
        if factor is not None:
            cross, update, core = _national_part(outputs, weights, factor, cross, inverse, num_global)
        schur = h_gg - np.einsum("gre,hre->gh", cross, _region_solve(inverse, update, core, cross))
    else:
        schur = h_gg
    positive = blocks_ok and bool(np.all(np.linalg.eigvalsh(schur) > 0))
    covariance = np.linalg.inv(schur) if positive else np.full_like(schur, np.nan)
    natural_cov = jacobian @ covariance @ jacobian.T
    se = np.sqrt(np.clip(np.diag(natural_cov), 0, None)) if positive else np.full(len(natural), np.nan)
    return Laplace(names, flat[gi], covariance, natural, se, positive, region_names,
                   flat[ri] if num_effects else np.zeros((num_regions, 0)), precision, cross, update, core)


def sample(estimate: Estimate, mask: Estimate, approx: Laplace, *, key: jax.Array, num: int) -> Estimate:
    """`num` draws of the estimate from the Laplace approximation, stacked (leading axis `num`):
    the globals from their marginal, each region's effects from its conditional given them (the
    conditional mean exact; the spread around it from the region's own block, without the
    national part's coupling between regions, which moves the national total only where the
    patents' knowledge elasticity is not 1).

    Where the Hessian was not positive definite every draw equals the estimate.
    """
    free = eqx.partition(estimate, mask)[0]
    global_index, region_index, _, _ = _layout(free)
    flat = ravel_pytree(free)[0]
    draws = np.broadcast_to(np.asarray(flat), (num, flat.size)).copy()
    if approx.positive_definite:
        k_global, k_region = jax.random.split(key)
        deviation = np.asarray(jax.random.multivariate_normal(k_global, jnp.zeros(len(approx.mean)),
                                                              jnp.asarray(approx.covariance), shape=(num,), method="eigh"))
        draws[:, global_index] = approx.mean + deviation
        if approx.region_effects:
            inverse = np.linalg.inv(approx.region_precision)  # (R, E, E)
            shift = -approx.region_solve(np.einsum("grf,sg->srf", approx.cross, deviation))  # E[z | g] - z_hat
            noise = np.asarray(jax.random.normal(k_region, (num, *approx.region_mean.shape)))
            draws[:, region_index] = approx.region_mean + shift + np.einsum("ref,srf->sre", np.linalg.cholesky(inverse),
                                                                                    noise)
    return stack_draws(estimate, mask, draws)


def draw_estimates(estimate: Estimate, mask: Estimate, approx: Laplace, *, key: jax.Array, num: int,
                   posterior: np.ndarray | None = None) -> Estimate:
    """`num` draws of the estimate, stacked: from the Laplace approximation (`sample`), or, given
    `posterior` (N, D), NUTS draws of the free entries (`Calibration.posterior`), `num` of its
    rows at random (with replacement only where it has fewer)."""
    if posterior is None:
        return sample(estimate, mask, approx, key=key, num=num)
    rows = np.asarray(jax.random.choice(key, posterior.shape[0], (num,), replace=num > posterior.shape[0]))
    return stack_draws(estimate, mask, posterior[rows])


def stack_draws(estimate: Estimate, mask: Estimate, draws) -> Estimate:
    """Draws (N, D) of the free entries, flat as `ravel_pytree` of the free part, as one stacked
    `Estimate` (leading axis N) with the fixed entries of `estimate` broadcast."""
    free, fixed = eqx.partition(estimate, mask)
    flat, unravel = ravel_pytree(free)
    stacked = jax.vmap(unravel)(jnp.asarray(draws, dtype=flat.dtype))
    num = jnp.shape(draws)[0]
    return eqx.combine(stacked, jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num, *jnp.shape(x))), fixed))


def free_natural(estimate: Estimate, free: Estimate) -> jax.Array:
    """The natural values of the parameters that are free in `free` (a partition's free part), flat,
    in the order of `PARAMETERS` (the order of `Laplace.parameter_names`)."""
    p = estimate.params.natural()
    return jnp.concatenate([jnp.ravel(getattr(p, n)) for n in PARAMETERS if free.params.unconstrained[n] is not None])
