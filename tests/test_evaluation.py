"""The rolling-origin evaluation: scores by hand, and origins that see nothing after them."""

import dataclasses

import numpy as np
import pytest

from diffcomm.errors import ConfigError
from diffcomm.evaluation import LEVEL_HELD, MODEL, check_origins, evaluate, scores

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


@pytest.mark.slow
def test_each_origin_sees_nothing_after_it(fitted_small):
    data, config, _ = fitted_small
    before = evaluate(data, config, origins=[2003], horizon=3, draws=20)
    changed = dataclasses.replace(data, patents=data.patents.at[3:].multiply(10.0))  # 2004-2006 differ wildly
    after = evaluate(changed, config, origins=[2003], horizon=3, draws=20)
    for name, mean in before.forecasts[2003].items():
        np.testing.assert_allclose(mean, after.forecasts[2003][name], rtol=1e-9, err_msg=name)
    assert not np.allclose(before.table.male, after.table.male)  # only the truth it is scored against moved
    assert list(before.table.method) == [MODEL, "persistence", "national drift", "log-linear trend", "NB panel regression",
                                         LEVEL_HELD]
    assert list(before.wins().columns) == ["origin", "male", "interval_90", "coverage_90_in_85_95"]
