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

import diffcomm as dc
from diffcomm.baselines import baseline_forecast, baselines
from diffcomm.evaluation import scores
from diffcomm.forecast import forecast_patents

HORIZON, KEYS = 3, 6


def summary(rows: list[dict[str, float]]) -> str:
    cells = []
    for name in ("male", "interval_90", "coverage_90"):
        values = np.array([r[name] for r in rows])
        cells.append(f"{values.mean():.4f} ± {values.std(ddof=1):.4f}")
    return " | ".join(cells)


def main(run: Path) -> None:
    calibration = dc.load_calibration(run)
    config, data = calibration.config, dc.load_dataset(calibration.config.data)
    observed = data.observed_patents()
    panel = baselines(data.drivers)["NB panel regression"]
    first = np.asarray(data.first_patents)[None]
    print(f"| origin | method | MALE | IS 90% | cover 90% |  (mean ± sd over {KEYS} keys)\n|---|---|---|---|---|")
    for origin in config.evaluation.origins:
        o = origin - data.years[0]
        fitted = dc.calibrate(data.through(origin), config, checkpoint=run / f"checkpoint_origin_{origin}")
        truth, model, other = observed[o:o + HORIZON], [], []
        for k in range(KEYS):
            band = forecast_patents(fitted.estimate, fitted.laplace, fitted.mask, data, o + HORIZON,
                                    key=jax.random.key(1000 + k), draws=config.evaluation.draws, level=0.9,
                                    history=observed[:o])
            model.append(scores(truth, band["mean"][o:], {p: q[o:] for p, q in band["quantiles"].items()}))
            mean, quantiles = baseline_forecast(panel, np.vstack([first, observed[:o]]), HORIZON,
                                                sorted(band["quantiles"]), jax.random.key(k))
            other.append(scores(truth, mean, quantiles))
        print(f"| {origin} | model | {summary(model)} |\n| {origin} | NB panel | {summary(other)} |", flush=True)


if __name__ == "__main__":
    with jax.enable_x64(True):
        main(Path(sys.argv[1]))
