"""The observation model (MODEL section 4): what the data should show, given the model's state.

The one home of the observation model: the links from state to expected observations
(`observe`), their inverse for patents (`knowledge_from_patents`), the likelihoods of observed
counts, a sampler of counts, the quantiles of a predictive distribution (`count_quantiles`) and
the deviance used to report a fit.

- Patents granted per region-year ~ NegativeBinomial(mean = exp(θ0 + η_t + θG (log Σ_k G_k − m_t)), size r),
  where η_t is the national effect of the year (`effects.national_effects`; 0 in the first year)
  and m_t the log growth of the modelled regions' total knowledge since the first year: the
  national effects carry the national level of grants, the model each region's share of it
  (`national_factor`). `observe` gives the model's own patents, exp(θ0 + θG log Σ_k G_k).
- Non-local connections of a region ~ BetaBinomial(total, mean share, concentration), the share
  `σ(θn0 + θn1 logit(1 − Lc) + θn2 logit mean_k X_k + θn3 log(1 + Σ W))` averaged over the fitted
  years, Σ W the strength of the region's cross-local ties, in and out (θn3 = 0 by default: the
  share then does not read the graph).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln
from jaxtyping import Array, Float

from .params import NaturalParams
from .state import RegionState


class Observations(eqx.Module):
    """What the model says data should show, per region (one year; batched: leading axes)."""

    patents: Float[Array, ""]  # expected patents granted (negative binomial mean)
    coinvention_share: Float[Array, ""]  # share of patents with a foreign co-inventor
    nonlocal_share: Float[Array, ""]  # share of connections that are non-local
    exports_intensity: Float[Array, ""]  # mean internationalization over domains
    development: Float[Array, ""]  # regional development


def observe(p: NaturalParams, s: RegionState, tie_strength: Array | float = 0.0) -> Observations:
    """The expected observations of one region's state; `tie_strength`: the summed strength of
    its cross-local ties, in and out (`model.tie_strength`), which raises the non-local share at
    slope `nonlocal_tie_slope` on log(1 + strength)."""
    logit_overlap = jax.scipy.special.logit(jnp.mean(s.overlap))
    # logit(1 - Lc); under sustained renewal with no erosion 1 - Lc decays geometrically and can
    # underflow to 0 in float32 after a century or so: read that limit as the smallest normal number
    logit_nonlocal = jax.scipy.special.logit(jnp.maximum(s.disconnection, jnp.finfo(s.disconnection.dtype).tiny))
    return Observations(
        patents=jnp.exp(p.patents_intercept + p.patents_knowledge_elasticity * jnp.log(jnp.sum(s.knowledge))),
        coinvention_share=jax.nn.sigmoid(p.coinvention_intercept + p.coinvention_slope * logit_overlap),
        nonlocal_share=jax.nn.sigmoid(
            p.nonlocal_intercept
            + p.nonlocal_connectedness_slope * logit_nonlocal
            + p.nonlocal_overlap_slope * logit_overlap
            + p.nonlocal_tie_slope * jnp.log1p(tie_strength)
        ),
        exports_intensity=jnp.mean(s.internationalization),
        development=s.development,
    )


def knowledge_from_patents(p: NaturalParams, counts: Array, national: Array | float = 0.0) -> Array:
    """Total knowledge that the patent link maps to `counts` in a year with national effect
    `national` on log patents: its inverse, at counts + 0.5 so that a zero count stays finite."""
    return jnp.exp((jnp.log(counts + 0.5) - p.patents_intercept - national) / p.patents_knowledge_elasticity)


def knowledge_growth(p: NaturalParams, patents: Float[Array, "t r"], first_knowledge: Float[Array, " r"]) -> Float[Array, " t"]:
    """m_t: log of the regions' total knowledge relative to the first year's (`first_knowledge`,
    summed over domains), read from the model's own patents (`observe`)."""
    knowledge = (patents * jnp.exp(-p.patents_intercept)) ** (1.0 / p.patents_knowledge_elasticity)
    return jnp.log(jnp.sum(knowledge, axis=-1)) - jnp.log(jnp.sum(first_knowledge))


def national_factor(p: NaturalParams, patents: Float[Array, "t r"], first_knowledge: Float[Array, " r"],
                    eta: Float[Array, " t"]) -> Float[Array, " t"]:
    """eta_t - theta_G m_t: what multiplies (in logs) the model's own patents in the year's
    expected count, so that the national level of grants is the national effects' and each
    region's share is the model's (with theta_G = 1 the expected national total is
    exp(theta_0 + eta_t) x the first year's total knowledge, whatever the model's growth)."""
    return eta - p.patents_knowledge_elasticity * knowledge_growth(p, patents, first_knowledge)


def negative_binomial_logpmf(mean: Array, count: Array, dispersion: Array) -> Array:
    """log NB(count | mean, size = dispersion), elementwise.

    Variance is mean + mean^2 / dispersion; large dispersion approaches the Poisson.
    """
    r = dispersion
    return (
        gammaln(count + r)
        - gammaln(r)
        - gammaln(count + 1.0)
        + r * (jnp.log(r) - jnp.log(r + mean))
        + count * (jnp.log(mean) - jnp.log(r + mean))
    )


def negative_binomial_nll(mean: Array, count: Array, dispersion: Array, mask: Array) -> Float[Array, ""]:
    """-log NB(count | mean, size = dispersion) (`negative_binomial_logpmf`), summed where mask is 1."""
    return -jnp.sum(jnp.where(mask > 0, negative_binomial_logpmf(mean, count, dispersion), 0.0))


def beta_binomial_nll(
    probability: Array, successes: Array, trials: Array, concentration: Array, mask: Array
) -> Float[Array, ""]:
    """-log BetaBinomial(successes | trials, mean probability, concentration), summed where mask is 1.

    The success probability varies around `probability` as Beta(c p, c (1 - p)); as the
    concentration c grows this becomes the binomial. Counts of connections are overdispersed
    (one firm's portfolio moves many patents at once), so the binomial is far too sure of them.
    """
    a = concentration * probability
    b = concentration * (1.0 - probability)
    log_p = (
        gammaln(trials + 1.0)
        - gammaln(successes + 1.0)
        - gammaln(trials - successes + 1.0)
        + gammaln(successes + a)
        + gammaln(trials - successes + b)
        - gammaln(trials + a + b)
        + gammaln(a + b)
        - gammaln(a)
        - gammaln(b)
    )
    return -jnp.sum(jnp.where(mask > 0, log_p, 0.0))


def dirichlet_multinomial_nll(share: Float[Array, "p k"], counts: Float[Array, "p k"], concentration: Array,
                              mask: Float[Array, " p"]) -> Float[Array, ""]:
    """-log DirichletMultinomial(counts | total, mean shares `share`, concentration), summed over the
    rows (e.g. periods) where mask is 1: how a total splits over K categories (e.g. patents over
    technology fields), the shares varying around `share` as Dirichlet(c share); as c grows this
    becomes the multinomial, far too sure of counts in the tens of thousands that move together."""
    a = concentration * share
    total = jnp.sum(counts, axis=-1)
    log_p = (
        gammaln(total + 1.0)
        - jnp.sum(gammaln(counts + 1.0), axis=-1)
        + gammaln(concentration)
        - gammaln(total + concentration)
        + jnp.sum(gammaln(counts + a) - gammaln(a), axis=-1)
    )
    return -jnp.sum(jnp.where(mask > 0, log_p, 0.0))


def sample_counts(key: jax.Array, mean: Array, dispersion: Array) -> Array:
    """Counts drawn from NB(mean, size = dispersion), as a gamma-Poisson mixture."""
    k_gamma, k_poisson = jax.random.split(key)
    rate = jax.random.gamma(k_gamma, dispersion, shape=mean.shape) * mean / dispersion
    return jax.random.poisson(k_poisson, rate).astype(mean.dtype)


HUGE_MEAN = 1e12
"""Above this mean a negative binomial count is drawn as its gamma rate plus the Poisson part's
normal approximation (`count_quantiles`)."""
COUNT_DRAWS = 2000
"""Counts drawn per cell for the quantiles of a predictive distribution (`count_quantiles`), the
model's and the baselines' alike, so that their intervals carry the same Monte Carlo error."""


def count_quantiles(means: np.ndarray, dispersion: np.ndarray, probabilities, key: jax.Array, draws: int = COUNT_DRAWS
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles of counts from an equal mixture of negative binomials, of means `means` (S, T, R)
    and size `dispersion` (broadcast to it): `draws` counts a cell, spread evenly over the S
    members (at least one each), drawn a year at a time. **Returns** the quantiles per cell
    (P, T, R) and of the total over the R cells (P, T). In NumPy, whose sampler is some ten
    times faster than JAX's on a CPU, seeded from `key`."""
    means = np.asarray(means, dtype=float)
    size = np.broadcast_to(np.asarray(dispersion, dtype=float), means.shape)
    if not (np.isfinite(means).all() and np.all(means >= 0) and np.all(size > 0)):
        raise ValueError("count_quantiles: the means must be finite and non-negative, the dispersions positive")
    q, per = np.asarray(list(probabilities), dtype=float), -(-draws // means.shape[0])
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    cells, totals = np.empty((q.size, *means.shape[1:])), np.empty((q.size, means.shape[1]))
    for t in range(means.shape[1]):
        mu, r, shape = means[:, t], size[:, t], (per, *means.shape[::2])
        huge = mu > HUGE_MEAN
        counts = rng.negative_binomial(r, r / (r + np.where(huge, 0.0, mu)), size=shape).astype(float)
        if huge.any():  # NumPy refuses Poisson rates near 1e19: the gamma part exact, the Poisson's sd a part in 1e6
            rate = rng.gamma(r, mu / r, size=shape)
            counts = np.where(huge, rate + np.sqrt(rate) * rng.standard_normal(shape), counts)
        counts = counts.reshape(-1, mu.shape[-1])
        cells[:, t], totals[:, t] = np.quantile(counts, q, axis=0), np.quantile(counts.sum(axis=-1), q)
    return cells, totals


def negative_binomial_deviance(observed: np.ndarray, mean: np.ndarray, dispersion: float) -> float:
    """Negative binomial deviance over observed cells (NaN cells skipped), in NumPy for reports."""
    y, mu, r = observed, mean, dispersion
    mask = ~np.isnan(y)
    y, mu = y[mask], mu[mask]
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(y > 0, y * np.log(y / mu), 0.0)
    second = (y + r) * np.log((y + r) / (mu + r))
    return float(2 * np.sum(first - second))
