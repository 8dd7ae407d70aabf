"""diffcomm: a differentiable model of local professional communities and internationalization.

The library, stage by stage (data flows one way): typed configs (`config`), observed data
(`data`), the model (`params`, `inputs`, `state`, `model`, `observation`), simulation
(`simulate`, `scenario`), latent region and national effects (`effects`), the calibration
objective (`loss`), and what uses it (`laplace`, `calibrate`, `filtering`, `forecast`,
`baselines`, `evaluation`, `policy`), with `report` writing run folders and `cli` at the door.

```python
import jax
import diffcomm as dc

config = dc.CalibrateConfig(data=dc.DataConfig(regions=["41860", "41940", "42660", "14460"]),
                            fit=dc.FitConfig(steps=300))
with jax.enable_x64(True):
    data = dc.load_dataset(config.data)
    calibration = dc.calibrate(data, config)
    result = dc.forecast(calibration, data, 2011, 2015)
```
"""

from importlib import metadata

from .archetypes import ARCHETYPES
from .calibrate import Calibration, FitResult, calibrate, fit, load_calibration
from .config import (
    CalibrateConfig,
    DataConfig,
    DriverTerm,
    EvaluationConfig,
    FitConfig,
    ModelConfig,
    OptimizeSettings,
    PolicyConfig,
    ScenarioConfig,
)
from .data import Dataset, load_dataset
from .effects import Effects, Estimate
from .ensemble import Ensemble, ensemble_from_calibration, lever_forcings, run_ensemble
from .errors import ConfigError, DataError
from .evaluation import Evaluation, evaluate
from .forecast import Forecast, forecast
from .inputs import LEVERS, Drivers, Forcing, Graph, Levers
from .laplace import Laplace, laplace
from .model import init_state, step
from .observation import Observations
from .params import NaturalParams, Params
from .policy import PolicyProblem, PolicyResult, optimize
from .scenario import Scenario, synthetic_regions
from .simulate import Trajectory, make_forcing, simulate, simulate_ensemble
from .state import Flows, RegionState, State, WorldState

__version__ = metadata.version("diffcomm")  # from pyproject.toml, the one place it is set

__all__ = [
    "ARCHETYPES", "CalibrateConfig", "Calibration", "ConfigError", "DataConfig", "DataError", "Dataset", "DriverTerm",
    "Drivers", "Effects", "Ensemble", "Estimate", "Evaluation", "EvaluationConfig", "FitConfig", "FitResult", "Flows",
    "Forcing", "Forecast", "Graph", "LEVERS", "Laplace", "Levers", "ModelConfig", "NaturalParams", "Observations",
    "OptimizeSettings", "Params", "PolicyConfig", "PolicyProblem", "PolicyResult", "RegionState", "Scenario",
    "ScenarioConfig", "State", "Trajectory", "WorldState", "calibrate", "ensemble_from_calibration", "evaluate", "fit",
    "forecast", "init_state", "laplace", "lever_forcings", "load_calibration", "load_dataset", "make_forcing",
    "optimize", "run_ensemble", "simulate", "simulate_ensemble", "step", "synthetic_regions",
]
