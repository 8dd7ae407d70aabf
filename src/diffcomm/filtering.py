"""Each region's level at a forecast origin, read from all its counts up to there.

The calibrated model gives every region a path of expected patents `mu_rt`. What the model
leaves out moves a region off that path and stays: a firm arrives or leaves, a lab closes. So
the observed log count is the path, a persistent deviation and count noise,

    log(y_rt + 1/2) = log mu_rt + d_rt + noise,   d_rt = d_r,t-1 + tau eps_rt   (a local level),

with the noise's variance that of a negative binomial count with dispersion `kappa`, read on the
log scale (delta method: (mu + mu^2/kappa) / (mu + 1/2)^2). A Kalman filter over the years up to
the origin gives each region's deviation there, `d_r` with variance `P_r`: a weighted mean of
its recent residuals, the weights set by how much the deviations move (`tau`) against how noisy
a count is (`kappa`, and the count's size). tau and kappa are fitted by maximum likelihood on
the one-step-ahead predictions (the filter's prediction error decomposition).

A forecast restarts knowledge from the filtered level `mu_ro exp(d_r)` rather than from the
last count alone, so that a noisy last year does not set the whole forecast; ahead of the
origin the deviation goes on as a random walk, whose variance `tau^2 h` the intervals carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

PRIOR_VARIANCE = 1.0
"""The variance of a region's deviation before its first count (on the log scale)."""


@dataclass(frozen=True)
class Level:
    """Filtered deviations at the origin and the fitted scales."""

    deviation: np.ndarray  # (R,) d_r on the log scale
    variance: np.ndarray  # (R,) P_r
    tau: float  # sd of the deviation's yearly step
    kappa: float  # negative binomial dispersion of the counts around the level

    def counts(self, expected: np.ndarray, standard: np.ndarray | float = 0.0) -> np.ndarray:
        """The counts the filtered level stands for, given the path's expected counts (R,) at the
        origin; with `standard` normal draws (..., R), draws of them from the deviation's posterior."""
        deviation = self.deviation + np.sqrt(self.variance) * standard
        return np.maximum(np.exp(np.log(expected + 0.5) + deviation) - 0.5, 0.0)


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
        mu = expected[t]
        noise = (mu + mu**2 / kappa) / (mu + 0.5) ** 2
        seen = np.isfinite(residuals[t])
        total = variance + noise
        error = np.where(seen, residuals[t] - deviation, 0.0)
        loglik -= 0.5 * np.sum(np.where(seen, np.log(2 * np.pi * total) + error**2 / total, 0.0))
        gain = np.where(seen, variance / total, 0.0)
        deviation = deviation + gain * error
        variance = (1 - gain) * variance
    return deviation, variance, loglik


def filter_level(observed: np.ndarray, expected: np.ndarray) -> Level:
    """Fit tau and kappa by maximum likelihood and filter to the last year of `observed` (T, R),
    NaN where not observed, around the model's expected counts `expected` (T, R)."""
    residuals = np.log(observed + 0.5) - np.log(expected + 0.5)

    def negative_loglik(x):
        return -kalman(residuals, expected, float(np.exp(x[0])), float(np.exp(x[1])))[2]

    best = minimize(negative_loglik, np.log([0.1, 20.0]), method="Nelder-Mead",
                    options=dict(xatol=1e-4, fatol=1e-3, maxiter=400))
    tau, kappa = (float(v) for v in np.exp(best.x))
    deviation, variance, _ = kalman(residuals, expected, tau, kappa)
    return Level(deviation, variance, tau, kappa)
