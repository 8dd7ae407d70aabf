"""What the model's path adds to a forecast: the central forecasts of each rolling origin, taken
apart.

    python experiments/us_metros/dynamics.py experiments/us_metros/run

Needs the run folder of `run.sh` (its origin checkpoints: each origin's fit is resumed, not
redone). For each origin, three years ahead, at the estimate with no future shock, each from the
regions' levels filtered from their counts up to the origin (`filtering.py`):

- `model`: what `diffcomm forecast` does: the level moves as the path moves, with the share of
  the path's regional change (the pass-through) the filter fitted on the years up to the origin;
- `path`: the same with the whole regional change passed (pass-through 1, the level refiltered);
- `national part only`: with none of it (pass-through 0): the level moves with the national total;
- `held`: the level (as the model's filter reads it) held flat.

It also gives the fitted pass-through and step, the spread of the path's regional part at three
years and its correlation with the regions' observed change of log(count + 1/2) from the filtered
level. Writes `dynamics.csv` beside this file and prints it as a Markdown table.
"""

import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from origins import HORIZON, origins

from diffcomm.filtering import filter_level
from diffcomm.forecast import expected_path


def male(mean: np.ndarray, truth: np.ndarray) -> float:
    seen = np.isfinite(truth)
    return float(np.mean(np.abs(np.log1p(mean[seen]) - np.log1p(truth[seen]))))


def moved(path: np.ndarray, history: np.ndarray, passthrough: float | None):
    """The filtered level (pass-through fitted where None) moved along its path; and the level."""
    level = filter_level(history, path[:len(history)], passthrough)
    moving, o = level.path(path), len(history)
    start = level.counts(path[:o])
    return (start + 0.5) * (moving[o:] + 0.5) / (moving[o - 1] + 0.5) - 0.5, level, start


def main(run: Path) -> pd.DataFrame:
    data, _, fits = origins(run)
    rows = []
    for at in fits:
        o, truth, history = at.fitted_years, at.truth, at.history
        path = np.asarray(expected_path(at.fitted.estimate, data, o + HORIZON, o + HORIZON, None))
        model, level, start = moved(path, history, None)
        change = np.log(path[o:] + 0.5) - np.log(path[o - 1] + 0.5)
        regional = change - (np.log(path[o:].sum(axis=1)) - np.log(path[o - 1].sum()))[:, None]
        seen = np.isfinite(truth[-1])
        realised = np.log(truth[-1] + 0.5) - np.log(start + 0.5)
        rows.append(dict(origin=at.origin, model=male(model, truth), path=male(moved(path, history, 1.0)[0], truth),
                         national_only=male(moved(path, history, 0.0)[0], truth),
                         held=male(np.repeat(start[None], HORIZON, axis=0), truth),
                         passthrough=level.passthrough, tau=level.tau, regional_sd=float(np.std(regional[-1])),
                         regional_corr=float(np.corrcoef(regional[-1][seen], realised[seen])[0, 1])))
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
