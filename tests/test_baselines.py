"""Baselines: each against a case whose answer is known, and their predictive intervals."""

import dataclasses

import jax
import numpy as np
import pytest

from diffcomm.baselines import (
    covariates,
    horizon_dispersion,
    log_linear_trend,
    national_drift,
    national_growth,
    panel_regression,
    persistence,
    predictive_quantiles,
    pseudo_dispersion,
)
from diffcomm.inputs import Drivers

pytestmark = pytest.mark.usefixtures("x64")


def test_persistence_repeats_the_last_observed_value():
    history = np.array([[1.0, 5.0], [2.0, np.nan], [np.nan, np.nan]])
    np.testing.assert_array_equal(persistence(history, 2), [[2.0, 5.0], [2.0, 5.0]])


def test_national_drift_compounds_the_growth_of_the_regions_seen_every_year():
    years = np.arange(5.0)
    history = np.stack([10 * np.exp(0.1 * years), 30 * np.exp(0.1 * years), 7.0 + years], axis=1)
    history[2, 2] = np.nan  # a region with a gap does not enter the national total
    assert national_growth(history) == pytest.approx(0.1, rel=1e-9)
    np.testing.assert_allclose(national_drift(history, 2)[:, 0], history[-1, 0] * np.exp(0.1 * np.array([1, 2])))


def test_log_linear_trend_extends_an_exact_line_in_log_counts():
    t = np.arange(6.0)
    history = np.expm1(np.stack([2.0 + 0.2 * t, 4.0 - 0.1 * t], axis=1))
    history[2, 0] = np.nan  # a gap does not bend the line
    expected = np.expm1(np.stack([2.0 + 0.2 * np.arange(6, 9), 4.0 - 0.1 * np.arange(6, 9)], axis=1))
    np.testing.assert_allclose(log_linear_trend(history, 3), expected, rtol=1e-9)


def test_the_panel_regression_recovers_covariate_specific_trends():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    level = rng.normal(2.0, 1.0, size=400)
    years = np.arange(8)
    mean = np.exp(level[None] + (0.05 + x @ np.array([0.1, -0.05]))[None] * (years[:, None] - 3.5))
    history = rng.poisson(mean).astype(float)
    ahead = panel_regression(x)(history, 2)
    truth = np.exp(level[None] + (0.05 + x @ np.array([0.1, -0.05]))[None] * (np.array([8, 9])[:, None] - 3.5))
    error = np.median(np.abs(np.log(ahead) - np.log(truth)))
    assert error < 0.15, error  # region levels are read from 8 noisy counts; the trends are pooled
    slope = np.log(ahead[1] / ahead[0])
    assert np.corrcoef(slope, x @ np.array([0.1, -0.05]))[0, 1] > 0.95


def test_covariates_are_standardized_and_constant_ones_dropped():
    drivers = dataclasses.replace(Drivers.uniform(5, 2), educating=np.arange(5.0))
    x = covariates(drivers)
    assert x.shape == (5, 1)
    np.testing.assert_allclose([x.mean(), x.std()], [0.0, 1.0], atol=1e-12)


def test_intervals_are_as_wide_as_past_errors_say():
    rng = np.random.default_rng(1)
    mean = rng.uniform(5, 200, size=600)
    noisy = rng.negative_binomial(5.0, 5.0 / (5.0 + mean[None]), size=(10, 600)).astype(float)  # r = 5 around a flat mean

    def truth_mean(history, horizon):
        return np.repeat(mean[None], horizon, axis=0)

    r = horizon_dispersion(truth_mean, noisy, 2)
    np.testing.assert_allclose(r, 5.0, rtol=0.2)
    q = predictive_quantiles(truth_mean(noisy, 2), r, (0.05, 0.95), jax.random.key(0))
    fresh = rng.negative_binomial(5.0, 5.0 / (5.0 + mean[None]), size=(2, 600))
    inside = np.mean((fresh >= q[0.05]) & (fresh <= q[0.95]))
    assert 0.86 < inside < 0.95


def test_a_mixtures_dispersion_leaves_out_the_spread_its_members_carry():
    rng = np.random.default_rng(3)
    members = 20.0 * np.exp(0.5 * rng.standard_normal((300, 1, 2000)))  # (S, years ahead, R): a wide lognormal spread
    pick = rng.integers(0, 300, size=2000)
    observed = rng.poisson(members[pick, 0, np.arange(2000)])[None].astype(float)  # each region one member's Poisson count
    observed[0, :10] = np.nan  # not observed: skipped
    mixed = pseudo_dispersion([(members, observed)], 2)
    assert mixed[0] > 300 and mixed[1] == mixed[0]  # the members carry the spread: Poisson around them; h=2 keeps h=1's
    single = pseudo_dispersion([(members.mean(axis=0, keepdims=True), observed)], 1)  # one path: the spread is noise
    np.testing.assert_allclose(single, 1 / (np.exp(0.25) - 1), rtol=0.35)  # a lognormal(0.5) mixing: variance ratio
    assert pseudo_dispersion([], 3) is None
    unseen = np.vstack([observed, np.full_like(observed, np.nan)])  # two years ahead, nothing observed
    np.testing.assert_array_equal(pseudo_dispersion([(np.concatenate([members, members], axis=1), unseen)], 2), mixed)
