"""What the model's dynamics add to a forecast: the central forecasts of each rolling origin,
taken apart.

    python experiments/us_metros/dynamics.py experiments/us_metros/run

Needs the run folder of `run.sh` (its origin checkpoints: each origin's fit is resumed, not
redone). For each origin, from each region's filtered level at the origin (`filtering.py`),
three years ahead, at the estimate with no future shock:

- `restarted`: what `diffcomm forecast` does: knowledge restarts at the filtered level and the
  model runs on (the row `model` of `evaluation.csv`, without the draws);
- `path`: the filtered level moved as the model's path for the region moves (the deviation from
  the path carried on, as the filter's own state-space model would forecast);
- `path, national part only` and `path, regional part only`: the same with the path's change
  split into the change of its national total and each region's change of share;
- `held`: the filtered level held flat.

It also gives the spread of the path's regional part at three years and its correlation with the
regions' observed change of log(count + 1/2) from the filtered level. Writes `dynamics.csv` beside
this file and prints it as a Markdown table.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import diffcomm as dc
from diffcomm.forecast import expected_path, origin_level

HORIZON = 3


def male(mean: np.ndarray, truth: np.ndarray) -> float:
    seen = np.isfinite(truth)
    return float(np.mean(np.abs(np.log1p(mean[seen]) - np.log1p(truth[seen]))))


def main(run: Path) -> pd.DataFrame:
    calibration = dc.load_calibration(run)
    data = dc.load_dataset(calibration.config.data)
    observed = data.observed_patents()
    rows = []
    for origin in calibration.config.evaluation.origins:
        o = origin - data.years[0]
        fitted = dc.calibrate(data.through(origin), calibration.config, checkpoint=run / f"checkpoint_origin_{origin}")
        estimate, truth = fitted.estimate, observed[o:o + HORIZON]
        level, expected = origin_level(estimate, data, observed[:o])
        start = level.counts(expected)  # (R,)
        path = np.asarray(expected_path(estimate, data, o + HORIZON, o + HORIZON, None))
        change = np.log(path[o:] + 0.5) - np.log(path[o - 1] + 0.5)  # (HORIZON, R)
        totals = path.sum(axis=1)
        national = (np.log(totals[o:]) - np.log(totals[o - 1]))[:, None]
        regional = change - national

        def moved(log_change):
            return np.maximum(np.exp(np.log(start + 0.5) + log_change) - 0.5, 0.0)

        restarted = np.asarray(expected_path(estimate, data, o + HORIZON, o, jnp.asarray(start)))[o:]
        forecasts = {"restarted": restarted, "path": moved(change), "path, national part only": moved(national + 0 * change),
                     "path, regional part only": moved(regional), "held": moved(0 * change)}
        seen = np.isfinite(truth[-1])
        realised = np.log(truth[-1] + 0.5) - np.log(start + 0.5)
        row = dict(origin=origin, **{name: male(f, truth) for name, f in forecasts.items()},
                   regional_sd=float(np.std(regional[-1])),
                   regional_corr=float(np.corrcoef(regional[-1][seen], realised[seen])[0, 1]),
                   national_path=float(national[-1, 0]),
                   national_observed=float(np.log(np.nansum(truth[-1])) - np.log(np.nansum(observed[o - 1]))))
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.to_csv(Path(__file__).parent / "dynamics.csv", index=False)
    table = frame.round(4).astype(str)
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for _, row in table.iterrows():
        print("| " + " | ".join(row) + " |")
    return frame


if __name__ == "__main__":
    with jax.enable_x64(True):
        main(Path(sys.argv[1]))
