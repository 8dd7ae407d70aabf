"""The Monte Carlo error of the rolling-origin scores: the model's forecast and the negative-binomial
panel's intervals at six keys each, with the fits held, and the mean and standard deviation of
MALE, the 90% interval score and the 90% coverage over them.

    python experiments/us_metros/montecarlo.py experiments/us_metros/run

Resumes each origin's fit from the run's checkpoints (not redone); the model's keys (1000-1005)
draw other parameters and other counts, the panel's (0-5) other counts around the same mean.
Prints a Markdown table (about 2 minutes on 2 cores).
"""

import sys
from pathlib import Path

import jax
import numpy as np
from origins import HORIZON, origins

from diffcomm.baselines import baseline_forecast
from diffcomm.evaluation import scores
from diffcomm.forecast import forecast_patents

KEYS = 6


def summary(rows: list[dict[str, float]]) -> str:
    cells = []
    for name in ("male", "interval_90", "coverage_90"):
        values = np.array([r[name] for r in rows])
        cells.append(f"{values.mean():.4f} ± {values.std(ddof=1):.4f}")
    return " | ".join(cells)


def main(run: Path) -> None:
    data, panel, fits = origins(run)
    print(f"| origin | method | MALE | IS 90% | cover 90% |  (mean ± sd over {KEYS} keys)\n|---|---|---|---|---|")
    for at in fits:
        o, model, other = at.fitted_years, [], []
        for k in range(KEYS):
            band = forecast_patents(at.fitted.estimate, at.fitted.laplace, at.fitted.mask, data, o + HORIZON,
                                    key=jax.random.key(1000 + k), draws=at.fitted.config.evaluation.draws, level=0.9,
                                    history=at.history)
            model.append(scores(at.truth, band["mean"][o:], {p: q[o:] for p, q in band["quantiles"].items()}))
            mean, quantiles = baseline_forecast(panel, at.panel_history, HORIZON, sorted(band["quantiles"]), jax.random.key(k))
            other.append(scores(at.truth, mean, quantiles))
        print(f"| {at.origin} | model | {summary(model)} |\n| {at.origin} | NB panel | {summary(other)} |", flush=True)


if __name__ == "__main__":
    with jax.enable_x64(True):
        main(Path(sys.argv[1]))
