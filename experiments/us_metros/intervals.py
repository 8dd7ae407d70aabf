"""Where the model's 90% intervals miss at each rolling origin, beside the negative-binomial
panel's: their mean width and penalty on log(1 + count) (the two parts of the interval score)
and the shares of observations below and above them, over all regions, those with fewer than 5
patents in the forecast year, those with 5 to 49 and those with 50 or more.

    python experiments/us_metros/intervals.py experiments/us_metros/run

Resumes each origin's fit from the run's checkpoints (not redone) and forecasts as the
rolling-origin evaluation does (same draws and key); prints a Markdown table.
"""

import sys
from pathlib import Path

import jax
import numpy as np
from origins import HORIZON, origins

from diffcomm.baselines import baseline_forecast
from diffcomm.forecast import forecast_patents

SMALL, LARGE = 5, 50


def parts(low, high, y) -> str:
    penalty = 20 * (np.maximum(low - y, 0) + np.maximum(y - high, 0))  # 2 / alpha, alpha = 0.1
    return f"{np.mean(high - low):.3f} | {np.mean(penalty):.3f} | {np.mean(y < low):.3f} | {np.mean(y > high):.3f}"


def main(run: Path) -> None:
    data, panel, fits = origins(run)
    print("| origin | method | regions | width | penalty | below | above |\n|---|---|---|---|---|---|---|")
    for at in fits:
        o, config = at.fitted_years, at.fitted.config
        band = forecast_patents(at.fitted.estimate, at.fitted.laplace, at.fitted.mask, data, o + HORIZON,
                                key=jax.random.key(config.fit.seed + at.origin), draws=config.evaluation.draws, level=0.9,
                                history=at.history)
        _, quantiles = baseline_forecast(panel, at.panel_history, HORIZON, sorted(band["quantiles"]),
                                         jax.random.key(at.origin))  # as the evaluation's
        truth = at.truth
        seen = np.isfinite(truth)
        y = np.log1p(truth[seen])
        groups = {"all": np.ones(y.shape, bool), f"under {SMALL} patents": truth[seen] < SMALL,
                  f"{SMALL} to {LARGE - 1} patents": (truth[seen] >= SMALL) & (truth[seen] < LARGE),
                  f"{LARGE} patents or more": truth[seen] >= LARGE}
        for method, q in (("model", {p: v[o:] for p, v in band["quantiles"].items()}), ("NB panel", quantiles)):
            low, high = (np.log1p(q[p][seen]) for p in (0.05, 0.95))
            for name, g in groups.items():
                print(f"| {at.origin} | {method} | {name} ({g.mean():.0%}) | {parts(low[g], high[g], y[g])} |", flush=True)


if __name__ == "__main__":
    with jax.enable_x64(True):
        main(Path(sys.argv[1]))
