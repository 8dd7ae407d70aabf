"""Typed configuration: one dataclass per concept, each default in one place, checked on creation.

These dataclasses are both Hydra's schemas (`conf/*.yaml` only choose group options and state
what a command changes) and what the library takes: `calibrate(dataset, CalibrateConfig())`
needs no Hydra. Every class checks its values in `__post_init__` and raises `ConfigError` with
the full key (`fit.restarts must be >= 1, got 0`), so a bad value is refused where it enters,
whether from the command line or from Python.

Modules: `base` (what every config shares, the model, the run), `simulate`, `calibrate` (data,
fit, evaluation, forecast) and `policy`, one per command family.
"""

from ..errors import ConfigError
from .base import ModelConfig, RuntimeConfig, from_dict, option
from .calibrate import (
    CalibrateConfig,
    DataConfig,
    DriverTerm,
    EvaluationConfig,
    FitConfig,
    ForecastConfig,
    NutsConfig,
    OptimizerConfig,
    parse_years,
)
from .policy import OBJECTIVE_PARTS, OptimizeConfig, OptimizeSettings, PolicyConfig
from .simulate import MneConfig, OutputConfig, ScenarioConfig, ShockConfig, SimulateConfig

SCHEMAS = {"simulate": SimulateConfig, "calibrate": CalibrateConfig, "forecast": ForecastConfig,
           "optimize": OptimizeConfig}

__all__ = [
    "OBJECTIVE_PARTS", "SCHEMAS", "CalibrateConfig", "ConfigError", "DataConfig", "DriverTerm", "EvaluationConfig",
    "FitConfig", "ForecastConfig", "MneConfig", "ModelConfig", "NutsConfig", "OptimizeConfig", "OptimizeSettings",
    "OptimizerConfig", "OutputConfig", "PolicyConfig", "RuntimeConfig", "ScenarioConfig", "ShockConfig", "SimulateConfig",
    "from_dict", "option", "parse_years",
]
