"""The rolling-origin evaluation: scores by hand, and origins that see nothing after them."""

import dataclasses

import numpy as np
import pytest

from diffcomm.errors import ConfigError
from diffcomm.evaluation import LAPLACE, LEVEL_HELD, MODEL, check_origins, evaluate, scores

pytestmark = pytest.mark.usefixtures("x64")


def test_scores_by_hand():
    observed = np.array([[0.0, 10.0], [np.nan, 4.0]])
    mean = np.array([[1.0, 8.0], [100.0, 4.0]])
    quantiles = {0.05: np.array([[0.0, 9.0], [0.0, 5.0]]), 0.25: mean, 0.75: mean, 0.95: np.array([[3.0, 12.0], [0.0, 5.0]])}
    got = scores(observed, mean, quantiles)
    assert got["mae"] == pytest.approx((1 + 2 + 0) / 3)
    assert got["rmse"] == pytest.approx(np.sqrt((1 + 4 + 0) / 3))
    assert got["male"] == pytest.approx((np.log(2) + np.log(11 / 9) + 0) / 3)
    # 90%: the third cell (4 below [5, 5]) is outside, by log(6) - log(5), at a penalty of 2 / 0.1
    widths = [np.log(4) - 0, np.log(13) - np.log(10), 0.0]
    assert got["interval_90"] == pytest.approx((sum(widths) + 20 * (np.log(6) - np.log(5))) / 3)
    assert got["coverage_90"] == pytest.approx(2 / 3)
    nothing = scores(observed, mean, None)
    assert np.isnan(nothing["interval_50"]) and nothing["male"] == got["male"]


def test_origins_must_leave_fitted_years_before_and_observed_years_after(fitted_small):
    data, _, _ = fitted_small  # 2000-2006
    check_origins(data, [2002, 2003], 3)
    for bad in (2001, 2004):
        with pytest.raises(ConfigError, match="evaluation.origins: each origin must lie in 2002-2003"):
            check_origins(data, [bad], 3)


@pytest.fixture(scope="module")
def at_2003(fitted_small):
    """The rolling origin at 2003 on the small calibration's data and config."""
    import jax

    data, config, _ = fitted_small
    with jax.enable_x64(True):
        return evaluate(data, config, origins=[2003], horizon=3, draws=20)


@pytest.mark.slow
def test_each_origin_sees_nothing_after_it(fitted_small, at_2003):
    data, config, _ = fitted_small
    before = at_2003
    changed = dataclasses.replace(data, patents=data.patents.at[3:].multiply(10.0))  # 2004-2006 differ wildly
    after = evaluate(changed, config, origins=[2003], horizon=3, draws=20)
    for name, mean in before.forecasts[2003].items():
        np.testing.assert_allclose(mean, after.forecasts[2003][name], rtol=1e-9, err_msg=name)
    assert not np.allclose(before.table.male, after.table.male)  # only the truth it is scored against moved
    assert list(before.table.method) == [MODEL, "persistence", "national drift", "log-linear trend", "NB panel regression",
                                         LEVEL_HELD]
    assert list(before.wins().columns) == ["origin", "male", "interval_90", "coverage_90_in_85_95"]


@pytest.mark.slow
def test_with_nuts_each_origin_forecasts_from_its_own_posterior_draws(fitted_small, at_2003):
    pytest.importorskip("blackjax")
    from diffcomm.config import NutsConfig

    data, config, _ = fitted_small
    nuts = dataclasses.replace(config, inference="nuts", nuts=NutsConfig(chains=2, warmup=20, draws=10, block=30, rank=4))
    laplace = at_2003
    both = evaluate(data, nuts, origins=[2003], horizon=3, draws=20)
    posterior = both.calibrations[2003].posterior
    assert posterior.shape[0] == 2 * 10 and np.all(np.isfinite(posterior))
    table = both.table.set_index("method")
    assert list(table.index) == [MODEL, "persistence", "national drift", "log-linear trend", "NB panel regression",
                                 LAPLACE, LEVEL_HELD]
    # the Laplace row is the Laplace-only evaluation's model; the model's own row comes from the NUTS draws
    same = laplace.table.set_index("method").loc[MODEL]
    np.testing.assert_allclose(table.loc[LAPLACE, list(same.index[1:])].to_numpy(float), same.to_numpy(float)[1:], rtol=1e-9)
    assert not np.isclose(table.loc[MODEL, "interval_90"], table.loc[LAPLACE, "interval_90"], rtol=1e-6)
    baselines = table.drop([MODEL, LAPLACE, LEVEL_HELD])  # the Laplace row is the model's, not a baseline to beat
    assert bool(both.wins().male[0]) == bool((table.loc[MODEL, "male"] < baselines.male).all())
