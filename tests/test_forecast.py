"""Forecasts: baselines and scores against hand-computed values, predictive bands, the horizon,
and a rolling origin that sees nothing after its origin."""

import dataclasses

import jax
import numpy as np
import pytest

from diffcomm.errors import ConfigError
from diffcomm.forecast import forecast, forecast_patents, log_linear_trend, persistence, rolling_origin, scores
from diffcomm.simulate import simulate_from_data

pytestmark = pytest.mark.usefixtures("x64")


def test_persistence_repeats_the_last_observed_value():
    history = np.array([[1.0, 5.0], [2.0, np.nan], [np.nan, np.nan]])
    np.testing.assert_array_equal(persistence(history, 2), [[2.0, 5.0], [2.0, 5.0]])


def test_log_linear_trend_extends_an_exponential_path_exactly():
    t = np.arange(6.0)
    history = np.expm1(np.stack([0.5 + 0.2 * t, 2.0 - 0.1 * t], axis=1))
    history[2, 0] = np.nan  # a gap does not bend the line
    np.testing.assert_allclose(log_linear_trend(history, 3), np.expm1(np.stack([0.5 + 0.2 * np.arange(6, 9),
                                                                                2.0 - 0.1 * np.arange(6, 9)], axis=1)))


def test_scores_by_hand():
    observed = np.array([[0.0, 10.0], [np.nan, 4.0]])
    predicted = np.array([[1.0, 8.0], [100.0, 4.0]])
    got = scores(predicted, observed)
    assert got["mae"] == pytest.approx((1 + 2 + 0) / 3)
    assert got["rmse"] == pytest.approx(np.sqrt((1 + 4 + 0) / 3))
    assert got["mean_abs_log_error"] == pytest.approx((np.log(2) + np.log(11 / 9) + 0) / 3)


def test_predictive_band_holds_the_fitted_path_and_count_noise(fitted_small):
    data, _, fitted = fitted_small
    band = forecast_patents(fitted.params, fitted.laplace, fitted.config.fit.free, data, 8, key=jax.random.key(0), draws=100,
                            level=0.9)
    for name in ("mean", "lower", "upper", "fitted"):
        assert band[name].shape == (8, 30)
    np.testing.assert_allclose(band["fitted"], simulate_from_data(fitted.params, data, 8)[1].patents, rtol=1e-10)
    assert (band["lower"] <= band["mean"]).mean() > 0.95 and (band["mean"] <= band["upper"]).mean() > 0.95
    observed = data.observed_patents()
    inside = (observed >= band["lower"][:6]) & (observed <= band["upper"][:6])
    assert 0.75 < inside.mean() <= 1.0  # a 90% band on the data the model was fitted to


def test_a_forecast_conditions_on_the_year_before_it(fitted_small):
    data, _, fitted = fitted_small
    ahead = forecast(fitted, data, 2004, 2008, draws=50)
    assert ahead.origin_year == 2003 and list(ahead.years) == list(range(2001, 2009))
    table = ahead.table()
    assert list(table.columns) == ["region", "year", "mean", "lower", "upper"]
    assert set(table.year) == {2004, 2005, 2006, 2007, 2008} and len(table) == 5 * 30
    np.testing.assert_array_equal(ahead.observed[:6], data.observed_patents())
    assert np.isnan(ahead.observed[6:]).all()
    for first, last in ((2007, 2200), (2000, 2003), (2008, 2007)):
        with pytest.raises(ConfigError, match="years must lie in 2001-2056"):
            forecast(fitted, data, first, last)


def test_without_a_usable_covariance_only_count_noise_remains(fitted_small):
    data, _, fitted = fitted_small
    flat = dataclasses.replace(fitted.laplace, positive_definite=False,
                               covariance=np.full_like(fitted.laplace.covariance, np.nan))
    band = forecast_patents(fitted.params, flat, fitted.config.fit.free, data, 6, key=jax.random.key(1), draws=50, level=0.9)
    np.testing.assert_allclose(band["mean"], band["fitted"], rtol=1e-10)  # every draw is the estimate


def test_the_rolling_origin_sees_nothing_after_its_origin(fitted_small):
    data, config, _ = fitted_small
    before = rolling_origin(data, config)
    changed = dataclasses.replace(data, patents=data.patents.at[3:].multiply(10.0))  # 2004-2006 differ wildly
    after = rolling_origin(changed, config)
    for name in ("model", "persistence", "log_linear_trend"):
        np.testing.assert_array_equal(before.predictions[name], after.predictions[name], err_msg=name)
    assert list(before.test_years) == [2004, 2005, 2006]
    assert not np.allclose(before.truth, after.truth)  # only the truth it is scored against moved
    summary = before.summary(data.codes, data.names, 2000)
    assert summary["train_years"] == [2000, 2003] and 0 <= summary["interval_coverage"] <= 1
    assert set(before.table(data.codes, data.names).columns) == {"region", "name", "year", "observed", "model", "lower",
                                                                "upper", "persistence", "log_linear_trend"}
