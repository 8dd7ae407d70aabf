"""Forecasts: predictive bands, conditioning on the counts up to the origin, the horizon, and the
calibrated regions a policy starts from."""

import dataclasses

import jax
import numpy as np
import pytest

from diffcomm.effects import national_effects
from diffcomm.errors import ConfigError
from diffcomm.forecast import calibrated_regions, expected_path, forecast, forecast_patents
from diffcomm.loss import expected_patents
from diffcomm.simulate import simulate_from_data

pytestmark = pytest.mark.usefixtures("x64")


def test_predictive_band_holds_the_fitted_path_and_count_noise(fitted_small):
    data, _, fitted = fitted_small
    band = forecast_patents(fitted.estimate, fitted.laplace, fitted.mask, data, 8, key=jax.random.key(0), draws=100,
                            level=0.9)
    for name in ("mean", "lower", "upper", "fitted"):
        assert band[name].shape == (8, 30)
    assert set(band["quantiles"]) == {0.05, 0.25, 0.75, 0.95}
    # the central path is the model's own patents times the national effect, which is the first year's level
    p = fitted.params.natural()
    own = simulate_from_data(fitted.params, data, 8, effects=fitted.estimate.effects)[1].patents
    share = np.asarray(own) / np.asarray(own).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(band["fitted"] / band["fitted"].sum(axis=1, keepdims=True), share, rtol=1e-9)
    eta = np.asarray(national_effects(p, np.r_[np.asarray(fitted.estimate.effects.year), 0.0, 0.0]))
    first_year = np.sum(np.asarray(data.first_patents) + 0.5)  # what the first year's knowledge maps back to
    np.testing.assert_allclose(band["fitted"].sum(axis=1), first_year * np.exp(eta), rtol=1e-9)
    assert (band["lower"] <= band["mean"]).mean() > 0.95 and (band["mean"] <= band["upper"]).mean() > 0.95
    observed = data.observed_patents()
    inside = (observed >= band["lower"][:6]) & (observed <= band["upper"][:6])
    assert 0.75 < inside.mean() <= 1.0  # a 90% band on the data the model was fitted to


def test_a_forecast_conditions_on_the_counts_up_to_the_year_before_it(fitted_small):
    data, _, fitted = fitted_small
    ahead = forecast(fitted, data, 2004, 2008, draws=50)
    assert ahead.origin_year == 2003 and list(ahead.years) == list(range(2001, 2009))
    table = ahead.table()
    assert list(table.columns) == ["region", "year", "mean", "lower", "upper"]
    assert set(table.year) == {2004, 2005, 2006, 2007, 2008} and len(table) == 5 * 30
    np.testing.assert_array_equal(ahead.observed[:6], data.observed_patents())
    assert np.isnan(ahead.observed[6:]).all()
    # counts after the origin do not move it; counts before it do
    later = dataclasses.replace(data, patents=data.patents.at[3:].multiply(10.0))
    np.testing.assert_array_equal(forecast(fitted, later, 2004, 2008, draws=50).mean[3:], ahead.mean[3:])
    earlier = dataclasses.replace(data, patents=data.patents.at[2].multiply(3.0))
    moved = forecast(fitted, earlier, 2004, 2008, draws=50).mean[3:]
    assert np.all(moved.sum(axis=1) > ahead.mean[3:].sum(axis=1))
    for first, last in ((2007, 2200), (2000, 2003), (2008, 2007)):
        with pytest.raises(ConfigError, match="years must lie in 2001-2056"):
            forecast(fitted, data, first, last)
    with pytest.raises(ConfigError, match="two observed years at least .* start in 2001 .* or from 2003, got 2002"):
        forecast(fitted, data, 2002, 2004)  # one year of counts cannot say how levels move
    assert np.isfinite(forecast(fitted, data, 2003, 2004, draws=10).mean).all()


def test_the_filtered_level_moves_as_the_path_moves_after_the_origin(fitted_small):
    data, _, fitted = fitted_small
    history = data.observed_patents()[:4]
    band = forecast_patents(fitted.estimate, fitted.laplace, fitted.mask, data, 6, key=jax.random.key(2), draws=20,
                            level=0.9, history=history)
    level = band["level"]
    path = np.asarray(expected_path(fitted.estimate, data, 6, 6, None))
    np.testing.assert_allclose(band["fitted"][:4], path[:4], rtol=1e-9)  # before the origin: the fit
    moving = level.path(path)  # with the share of the path's regional change the filter fitted
    start = level.counts(path[:4])
    np.testing.assert_allclose(band["fitted"][4:], (start + 0.5) * (moving[4:] + 0.5) / (moving[3] + 0.5) - 0.5, rtol=1e-9)
    # the counts up to the origin set the level: a region's doubled history doubles its forecast, about
    doubled = history.copy()
    doubled[:, 0] = 2 * doubled[:, 0] + 0.5
    again = forecast_patents(fitted.estimate, fitted.laplace, fitted.mask, data, 6, key=jax.random.key(2), draws=20,
                             level=0.9, history=doubled)
    assert 1.5 < (again["fitted"][4, 0] + 0.5) / (band["fitted"][4, 0] + 0.5) < 2.5
    np.testing.assert_allclose(again["fitted"][4, 1:], band["fitted"][4, 1:], rtol=0.2)



def test_counts_ahead_are_as_dispersed_as_the_forecasts_own_past_errors_say(fitted_small):
    data, _, fitted = fitted_small
    path = np.asarray(expected_path(fitted.estimate, data, 5, 5, None))
    rng = np.random.default_rng(0)
    bands = {}
    for r in (2.0, 1000.0):  # histories of counts around the estimate's path, noisy and close to Poisson
        history = rng.negative_binomial(r, r / (r + path)).astype(float)
        bands[r] = forecast_patents(fitted.estimate, fitted.laplace, fitted.mask, data, 6, key=jax.random.key(2),
                                    draws=30, level=0.9, history=history)
    assert 1.0 < bands[2.0]["count_dispersion"][0] < 4.0 < 50.0 < bands[1000.0]["count_dispersion"][0]
    width = {r: np.mean(np.log1p(b["upper"][5]) - np.log1p(b["lower"][5])) for r, b in bands.items()}
    assert width[2.0] > 2 * width[1000.0]
    # three years of counts leave no earlier origin to learn from: the fitted dispersion stays
    short = forecast_patents(fitted.estimate, fitted.laplace, fitted.mask, data, 6, key=jax.random.key(2), draws=30,
                             level=0.9, history=history[:3])
    assert "level" in short and "count_dispersion" not in short

def test_one_step_ahead_the_forecast_restarts_from_the_origins_counts_as_the_fit_does(fitted_small):
    data, _, fitted = fitted_small
    ahead = dataclasses.replace(data, one_step_ahead=True)
    band = forecast_patents(fitted.estimate, fitted.laplace, fitted.mask, ahead, 6, key=jax.random.key(2), draws=20,
                            level=0.9, history=ahead.observed_patents()[:4])
    assert "level" not in band  # no filtered level: the counts themselves
    assert np.isfinite(forecast(fitted, ahead, 2002, 2004, draws=5).mean).all()  # so one year of counts is enough
    fit = np.asarray(expected_patents(fitted.estimate, ahead)[0])  # every year one step ahead of the year before's count
    np.testing.assert_allclose(band["fitted"][:5], fit[:5], rtol=1e-9)  # the first year ahead included
    assert not np.allclose(band["fitted"][5], fit[5])  # two years ahead: from the forecast's own year 5, not the count
    beyond = forecast_patents(fitted.estimate, fitted.laplace, fitted.mask, ahead, 8, key=jax.random.key(2), draws=5,
                              level=0.9)  # no history: the data's years one step ahead, then on past them
    np.testing.assert_allclose(beyond["fitted"][:6], fit, rtol=1e-9)
    assert beyond["fitted"].shape == (8, 30) and np.isfinite(beyond["fitted"]).all()


def test_without_a_usable_covariance_only_count_noise_remains(fitted_small):
    data, _, fitted = fitted_small
    flat = dataclasses.replace(fitted.laplace, positive_definite=False,
                               covariance=np.full_like(fitted.laplace.covariance, np.nan))
    band = forecast_patents(fitted.estimate, flat, fitted.mask, data, 6, key=jax.random.key(1), draws=50, level=0.9)
    np.testing.assert_allclose(band["mean"], band["fitted"], rtol=1e-10)  # every draw is the estimate


def test_calibrated_regions_carry_the_latent_effects(fitted_small):
    data, _, fitted = fitted_small
    state, drivers, graph = calibrated_regions(fitted, data)
    p = fitted.params.natural()
    np.testing.assert_allclose(drivers.attraction, p.attraction_scale * fitted.estimate.effects.attraction, rtol=1e-12)
    assert state.regions.knowledge.shape == (30, 1) and bool(np.all(np.isfinite(state.regions.knowledge)))
