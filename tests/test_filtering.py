"""The filtered level at a forecast origin."""

import numpy as np
import pytest

from diffcomm.filtering import filter_level, kalman, moving_path


def test_the_level_of_regions_with_few_counts_is_read_without_bias_on_the_log_scale():
    # Poisson counts of a steady mean around a path at that mean: the log of a count lies below
    # the log of its mean (by 0.24 at a mean of 1, 0.08 at 0.1), which the filter corrects for
    rng = np.random.default_rng(2)
    for mean in (0.1, 0.3, 1.0, 4.0):
        expected = np.full((10, 4000), mean)
        level = filter_level(rng.poisson(expected).astype(float), expected)
        # on the log scale the level is unbiased (the delta method alone is 0.06 high at a mean of 0.1 and 0.3)
        assert abs(np.mean(level.deviation)) < 0.02, (mean, np.mean(level.deviation))


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


def test_the_filter_finds_how_much_of_the_paths_regional_change_the_counts_follow():
    rng = np.random.default_rng(3)
    years, regions = 10, 3000
    trend = rng.normal(0, 0.08, size=regions)  # each region's path drifts in share
    expected = 40.0 * np.exp(np.arange(years)[:, None] * trend[None])
    for passthrough in (0.3, 1.0):
        wander = np.cumsum(rng.normal(0, 0.05, size=(years, regions)), axis=0)
        observed = rng.poisson(moving_path(expected, passthrough) * np.exp(wander)).astype(float)
        level = filter_level(observed, expected)
        assert abs(level.passthrough - passthrough) < 0.1, (passthrough, level.passthrough)


def test_the_pass_through_is_a_share_even_where_the_counts_run_against_the_path():
    rng = np.random.default_rng(4)
    trend = rng.normal(0, 0.08, size=3000)
    expected = 40.0 * np.exp(np.arange(8)[:, None] * trend[None])
    observed = rng.poisson(moving_path(expected, -1.0)).astype(float)  # regions move against the path's change
    level = filter_level(observed, expected)
    assert 0.0 <= level.passthrough < 0.05  # unbounded, the fit gave about -1


def test_one_year_of_counts_is_refused():
    with pytest.raises(ValueError, match="two years of counts at least, got 1"):
        filter_level(np.array([[12.0, 18.0, 41.0]]), np.array([[10.0, 20.0, 40.0]]))


def test_with_no_pass_through_every_region_moves_with_the_total_alone():
    expected = np.array([[0.1, 1.0, 10.0, 1000.0], [0.1, 3.0, 5.0, 3000.0], [0.4, 1.0, 20.0, 500.0]])
    growth = expected.sum(axis=1) / expected[0].sum()
    np.testing.assert_allclose(moving_path(expected, 0.0), expected[:1] * growth[:, None], rtol=1e-12)
    np.testing.assert_allclose(moving_path(expected, 1.0), expected, rtol=1e-12)
    half = moving_path(expected, 0.5)  # halfway, on the log scale
    np.testing.assert_allclose(half, np.sqrt(moving_path(expected, 0.0) * expected), rtol=1e-12)
