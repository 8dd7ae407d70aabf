"""A diagnostic of the rolling origin's 90% intervals by size of region: the model as it forecasts,
and the model with every parameter draw's level at the filtered level (no level drawn from its
filtered spread, in the forecast and in the pseudo-forecasts that size its count noise), beside
the negative-binomial panel: interval score, width, penalty and MALE over all regions and those
with under 5, 5 to 49, and 50 or more patents in the forecast year.

    python experiments/us_metros/level_spread.py experiments/us_metros/run

Resumes each origin's fit from the run's checkpoints; the same keys as the evaluation. The second
variant replaces `forecast._moved_level` for the run of this script only.
"""

import dataclasses
import importlib
import sys
from pathlib import Path

import jax
import numpy as np
from origins import HORIZON, origins

from diffcomm.baselines import baseline_forecast

F = importlib.import_module("diffcomm.forecast")
PROBABILITIES = [0.05, 0.25, 0.75, 0.95]
MOVED_LEVEL = F._moved_level


def at_filtered_level(filtered, means, origin, key):
    """`forecast._moved_level` with the filtered level's variance set to 0: every member starts at
    the filtered level (its random walk after the origin kept, drawn from the same key)."""
    return MOVED_LEVEL(dataclasses.replace(filtered, variance=np.zeros_like(filtered.variance)), means, origin, key)


def parts(mean, low, high, truth, seen) -> dict[str, np.ndarray]:
    y = np.log1p(truth[seen])
    low, high = np.log1p(low[seen]), np.log1p(high[seen])
    penalty = 20 * (np.maximum(low - y, 0) + np.maximum(y - high, 0))
    return dict(score=high - low + penalty, width=high - low, penalty=penalty, male=np.abs(np.log1p(mean[seen]) - y))


def main(run: Path) -> None:
    data, panel, fits = origins(run)
    print("| origin | forecast | regions | IS 90% | width | penalty | MALE |\n|---|---|---|---|---|---|---|")
    for at in fits:
        o, config, truth = at.fitted_years, at.fitted.config, at.truth
        seen = np.isfinite(truth)
        groups = {"all": np.ones(seen.sum(), bool), "under 5": truth[seen] < 5,
                  "5 to 49": (truth[seen] >= 5) & (truth[seen] < 50), "50 or more": truth[seen] >= 50}
        rows = {}
        for name, moved in (("model", MOVED_LEVEL), ("model, level at the filtered level", at_filtered_level)):
            F._moved_level = moved
            band = F.forecast_patents(at.fitted.estimate, at.fitted.laplace, at.fitted.mask, data, o + HORIZON,
                                      key=jax.random.key(config.fit.seed + at.origin), draws=config.evaluation.draws,
                                      level=0.9, history=at.history)
            rows[name] = parts(band["mean"][o:], band["quantiles"][0.05][o:], band["quantiles"][0.95][o:], truth, seen)
        F._moved_level = MOVED_LEVEL
        mean, q = baseline_forecast(panel, at.panel_history, HORIZON, PROBABILITIES, jax.random.key(at.origin))
        rows["NB panel"] = parts(mean, q[0.05], q[0.95], truth, seen)
        for name, p in rows.items():
            for group, g in groups.items():
                cells = " | ".join(f"{p[k][g].mean():.{4 if k == 'male' else 3}f}" for k in ("score", "width", "penalty", "male"))
                print(f"| {at.origin} | {name} | {group} ({g.mean():.0%}) | {cells} |", flush=True)


if __name__ == "__main__":
    with jax.enable_x64(True):
        main(Path(sys.argv[1]))
