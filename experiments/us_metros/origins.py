"""The rolling origin's fits for the diagnostic scripts beside this one (`intervals.py`,
`montecarlo.py`, `level_spread.py`, `dynamics.py`): each origin's calibration resumed from the run
folder's checkpoints (not redone), with the counts before and after it."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import diffcomm as dc
from diffcomm.baselines import Method, baselines

HORIZON = 3


@dataclass
class Origin:
    origin: int
    fitted_years: int  # o: the years after the first up to the origin
    fitted: dc.Calibration
    history: np.ndarray  # (o, R) observed counts up to the origin, after the first year
    truth: np.ndarray  # (HORIZON, R) observed counts after it
    panel_history: np.ndarray  # (o + 1, R) the history with the first year, as the baselines read it


def origins(run: Path) -> tuple[dc.Dataset, Method, Iterator[Origin]]:
    """The run's data, its negative-binomial panel baseline, and its origins' fits, one at a time."""
    calibration = dc.load_calibration(run)
    config, data = calibration.config, dc.load_dataset(calibration.config.data)
    observed, first = data.observed_patents(), np.asarray(data.first_patents)[None]

    def each() -> Iterator[Origin]:
        for origin in config.evaluation.origins:
            o = origin - data.years[0]
            fitted = dc.calibrate(data.through(origin), config, checkpoint=run / f"checkpoint_origin_{origin}")
            yield Origin(origin, o, fitted, observed[:o], observed[o:o + HORIZON], np.vstack([first, observed[:o]]))

    return data, baselines(data.drivers)["NB panel regression"], each()
