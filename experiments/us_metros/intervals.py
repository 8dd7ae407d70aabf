"""Where the model's 90% intervals miss at each rolling origin: their mean width and penalty on
log(1 + count) (the two parts of the interval score) and the shares of observations below and
above them, over all regions and over those with 50 patents or more in the forecast year.

    python experiments/us_metros/intervals.py experiments/us_metros/run

Resumes each origin's fit from the run's checkpoints (not redone) and forecasts as the
rolling-origin evaluation does (same draws and key); prints a Markdown table.
"""

import sys
from pathlib import Path

import jax
import numpy as np

import diffcomm as dc
from diffcomm.forecast import forecast_patents

HORIZON, LARGE = 3, 50


def parts(low, high, y) -> str:
    penalty = 20 * (np.maximum(low - y, 0) + np.maximum(y - high, 0))  # 2 / alpha, alpha = 0.1
    return f"{np.mean(high - low):.3f} | {np.mean(penalty):.3f} | {np.mean(y < low):.3f} | {np.mean(y > high):.3f}"


def main(run: Path) -> None:
    calibration = dc.load_calibration(run)
    config, data = calibration.config, dc.load_dataset(calibration.config.data)
    observed = data.observed_patents()
    print("| origin | regions | width | penalty | below | above |\n|---|---|---|---|---|---|")
    for origin in config.evaluation.origins:
        o = origin - data.years[0]
        fitted = dc.calibrate(data.through(origin), config, checkpoint=run / f"checkpoint_origin_{origin}")
        band = forecast_patents(fitted.estimate, fitted.laplace, fitted.mask, data, o + HORIZON,
                                key=jax.random.key(config.fit.seed + origin), draws=config.evaluation.draws, level=0.9,
                                history=observed[:o])
        truth = observed[o:o + HORIZON]
        seen = np.isfinite(truth)
        y = np.log1p(truth[seen])
        low, high = (np.log1p(band["quantiles"][p][o:][seen]) for p in (0.05, 0.95))
        large = truth[seen] >= LARGE
        print(f"| {origin} | all | {parts(low, high, y)} |\n| {origin} | {LARGE} patents or more | "
              f"{parts(low[large], high[large], y[large])} |", flush=True)


if __name__ == "__main__":
    with jax.enable_x64(True):
        main(Path(sys.argv[1]))
