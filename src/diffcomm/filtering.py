"""Each region's level at a forecast origin, read from all its counts up to there.

The calibrated model gives every region a path of expected patents `mu_rt`. What the model
leaves out moves a region off that path and stays: a firm arrives or leaves, a lab closes. So
the observed log count is the path, a persistent deviation and count noise,

    log(y_rt + 1/2) = log(m_rt + 1/2) + d_rt - g_rt + noise,   d_rt = d_r,t-1 + tau eps_rt   (a local level),

with `v_rt`, the noise's variance, that of log(y + 1/2) for a negative binomial count y of mean
m and dispersion `kappa`, and `g_rt` how far the mean of log(y + 1/2) lies below log(m + 1/2)
(`log_count_moments`: the Poisson part exact below a mean of 200, by the delta method above,
v = m / (m + 1/2)^2 and g = v / 2; the extra variance m^2/kappa by the delta method). The log of
a count lies below the log of its mean (by 0.24 for a Poisson count of mean 1, 0.08 at a mean
of 0.1), so without `g` the level of a region of few patents would be read too low, and its
forecast with it. `exp(log(m + 1/2) + d) - 1/2` is the region's expected count.

The path the level moves with, `m_rt`, is the model's path with a share `beta` (the
pass-through) of each region's change of share since the first year filtered: `m_rt = mu_rt
exp(-(1 - beta) c_rt)`, with `c_rt` the change of log(mu_rt / sum_r mu_rt) since then. With
beta = 1 the counts follow the path's regional moves; with beta = 0 only its national total, the
regions' own levels then being the deviations. A Kalman filter over the years up to the origin
gives each region's deviation there, `d_r` with variance `P_r`: a weighted mean of its recent
residuals, the weights set by how much the deviations move (`tau`) against how noisy a count is
(`kappa`, and the count's size). tau, kappa (at most `MAX_DISPERSION`) and beta are fitted by
maximum likelihood on the one-step-ahead predictions (the filter's prediction error
decomposition), on the years up to the origin only; beta is a share, kept in [0, 1] (a logistic
transform), so that where the counts say little about it (a path that hardly moves) it cannot
run off to values that would move the regions against, or beyond, the path's change ahead.

A forecast moves the filtered level, `(m_ro + 1/2) exp(d_r) - 1/2`, as `m + 1/2` moves after
the origin (the filter's own forecast), rather than from the last count alone, so that a noisy
last year does not set the whole forecast; ahead of the origin the deviation goes on as a
random walk, whose variance `tau^2 h` the intervals carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, gammaln

PRIOR_VARIANCE = 1.0
"""The variance of a region's deviation before its first count (on the log scale)."""
MIN_YEARS = 2
"""The years of counts the filter needs: one says nothing of the step or the pass-through."""
TINY = 1e-4
"""The least expected count a path is read at (a region the model gives nothing)."""
MAX_DISPERSION = 1e6
"""The largest count dispersion the filter fits: Poisson around the level, to a part in a
thousand at a mean of 1,000 (without it the fit runs to overflow where the counts are Poisson)."""


@dataclass(frozen=True)
class Level:
    """Filtered deviations at the origin and the fitted scales."""

    deviation: np.ndarray  # (R,) d_r on the log scale of the expected count
    variance: np.ndarray  # (R,) P_r
    tau: float  # sd of the deviation's yearly step
    kappa: float  # negative binomial dispersion of the counts around the level
    passthrough: float  # beta: the share of the path's regional change the counts follow

    def path(self, expected: np.ndarray) -> np.ndarray:
        """The path (..., T, R) the level moves with, from the model's expected counts (..., T, R)
        whose first row is the first year filtered (`moving_path`)."""
        return moving_path(expected, self.passthrough)

    def counts(self, expected: np.ndarray, standard: np.ndarray | float = 0.0) -> np.ndarray:
        """The expected counts (R,) the filtered level stands for at the origin, read along the
        moving path (`path`) of the model's expected counts `expected` (T, R) from the first year
        filtered to the origin, as it was filtered; with `standard` normal draws (..., R), draws
        of them from the deviation's posterior."""
        deviation = self.deviation + np.sqrt(self.variance) * standard
        return np.maximum(np.exp(np.log(self.path(expected)[-1] + 0.5) + deviation) - 0.5, 0.0)


def moving_path(expected: np.ndarray, passthrough: float) -> np.ndarray:
    """The expected counts (..., T, R) with only `passthrough` of each region's change of share
    since the first row kept: mu_t (mu_t / mu_1 / (S_t / S_1)) ** (passthrough - 1), S the total
    over regions (the module's docstring). With 0, each region's first count times the total's growth."""
    mu = np.maximum(expected, TINY)
    total = np.sum(mu, axis=-1, keepdims=True)
    change = np.log(mu / mu[..., :1, :]) - np.log(total / total[..., :1, :])
    return mu * np.exp((passthrough - 1) * change)


def _poisson_log_moments(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For Poisson counts y of the means `grid`: log(mu + 1/2) - E log(y + 1/2), and Var log(y + 1/2)."""
    y = np.arange(4 * int(grid.max()) + 60)[None]
    p = np.exp(y * np.log(grid[:, None]) - grid[:, None] - gammaln(y + 1))
    first, second = p @ np.log(y[0] + 0.5), p @ np.log(y[0] + 0.5) ** 2
    return np.log(grid + 0.5) - first, second - first**2


EXACT_BELOW = 200.0
"""Below this mean the moments of log(y + 1/2) of the Poisson part are exact (tabled); above it,
the delta method's, which are then within 2e-5 of them (1% of the variance)."""
_GRID = np.exp(np.linspace(np.log(TINY), np.log(EXACT_BELOW), 600))
_GAP, _VARIANCE = _poisson_log_moments(_GRID)


def log_count_moments(mu: np.ndarray, kappa: float) -> tuple[np.ndarray, np.ndarray]:
    """How far E log(y + 1/2) lies below log(mu + 1/2), and Var log(y + 1/2), for negative binomial
    counts y of mean `mu` and dispersion `kappa`: the Poisson part exact below `EXACT_BELOW`
    (the delta method above), the extra variance mu^2 / kappa by the delta method."""
    extra = mu**2 / kappa / (mu + 0.5) ** 2
    small = mu < EXACT_BELOW
    log_mu = np.log(np.clip(mu, TINY, EXACT_BELOW))
    poisson_gap = np.where(small, np.interp(log_mu, np.log(_GRID), _GAP), 0.5 * mu / (mu + 0.5) ** 2)
    poisson_variance = np.where(small, np.interp(log_mu, np.log(_GRID), _VARIANCE), mu / (mu + 0.5) ** 2)
    return poisson_gap + 0.5 * extra, poisson_variance + extra


def kalman(residuals: np.ndarray, expected: np.ndarray, tau: float, kappa: float):
    """Filter the log residuals (T, R; NaN where not observed) of counts around `expected` (T, R).

    **Returns:** the deviation (R,) and its variance (R,) after the last year, and the log
    likelihood of the one-step-ahead predictions.
    """
    deviation = np.zeros(residuals.shape[1])
    variance = np.full(residuals.shape[1], PRIOR_VARIANCE)
    loglik = 0.0
    for t in range(residuals.shape[0]):
        if t > 0:
            variance = variance + tau**2
        gap, noise = log_count_moments(expected[t], kappa)
        seen = np.isfinite(residuals[t])
        total = variance + noise
        error = np.where(seen, residuals[t] + gap - deviation, 0.0)  # E log(y + 1/2) = log(mu + 1/2) - gap
        loglik -= 0.5 * np.sum(np.where(seen, np.log(2 * np.pi * total) + error**2 / total, 0.0))
        gain = np.where(seen, variance / total, 0.0)
        deviation = deviation + gain * error
        variance = (1 - gain) * variance
    return deviation, variance, loglik


def filter_level(observed: np.ndarray, expected: np.ndarray, passthrough: float | None = None) -> Level:
    """Fit tau, kappa and the pass-through (unless given) by maximum likelihood and filter to the
    last year of `observed` (T, R), NaN where not observed, around the model's expected counts
    `expected` (T, R). Needs two years at least: one year says nothing of the step or the pass-through."""
    if observed.shape[0] < MIN_YEARS:
        raise ValueError(f"the level's filter needs two years of counts at least, got {observed.shape[0]}")
    log_observed = np.log(observed + 0.5)

    def share(x) -> float:  # the pass-through from its logit (given: as given)
        return float(expit(x[2])) if passthrough is None else passthrough

    def dispersion(x) -> float:
        return float(np.exp(min(x[1], np.log(MAX_DISPERSION))))

    def run(x):
        moving = moving_path(expected, share(x))
        return kalman(log_observed - np.log(moving + 0.5), moving, float(np.exp(x[0])), dispersion(x))

    start = [np.log(0.1), np.log(20.0)] + ([0.0] if passthrough is None else [])  # a pass-through of 1/2
    best = minimize(lambda x: -run(x)[2], np.array(start), method="Nelder-Mead",
                    options=dict(xatol=1e-4, fatol=1e-3, maxiter=800))
    deviation, variance, _ = run(best.x)
    return Level(deviation, variance, float(np.exp(best.x[0])), dispersion(best.x), share(best.x))
