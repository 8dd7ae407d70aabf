"""The filtered level at a forecast origin."""

import numpy as np

from diffcomm.filtering import filter_level, kalman


def test_a_flat_path_and_steady_counts_leave_no_deviation():
    expected = np.full((8, 3), 20.0)
    level = filter_level(expected.copy(), expected)
    np.testing.assert_allclose(level.deviation, 0.0, atol=1e-9)
    np.testing.assert_allclose(level.counts(expected[-1]), expected[-1], rtol=1e-9)


def test_the_filter_averages_noise_and_follows_lasting_moves():
    rng = np.random.default_rng(0)
    regions, years = 3000, 8
    expected = np.full((years, regions), 30.0)
    steps = rng.normal(0, 0.1, size=(years, regions))
    level = np.cumsum(steps, axis=0)  # a local level: random-walk deviations of sd 0.1 a year
    observed = rng.poisson(expected * np.exp(level)).astype(float)
    observed[3, :5] = np.nan  # missing years are skipped
    fitted = filter_level(observed, expected)
    assert abs(fitted.tau - 0.1) < 0.03, fitted.tau
    # the filtered deviation is closer to the true last level than the last count alone
    last = np.log(observed[-1] + 0.5) - np.log(30.5)
    assert np.mean((fitted.deviation - level[-1]) ** 2) < 0.8 * np.mean((last - level[-1]) ** 2)
    # and its variance says how far off it is
    z = (fitted.deviation - level[-1]) / np.sqrt(fitted.variance)
    assert 0.8 < z.std() < 1.25


def test_the_one_step_likelihood_prefers_the_true_step_size():
    rng = np.random.default_rng(1)
    expected = np.full((10, 2000), 50.0)
    level = np.cumsum(rng.normal(0, 0.2, size=expected.shape), axis=0)
    observed = rng.poisson(expected * np.exp(level)).astype(float)
    residuals = np.log(observed + 0.5) - np.log(expected + 0.5)
    likelihood = {tau: kalman(residuals, expected, tau, 1e6)[2] for tau in (0.05, 0.2, 0.8)}
    assert max(likelihood, key=likelihood.get) == 0.2
