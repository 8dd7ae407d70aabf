"""diffcomm: a differentiable model of local professional communities and internationalization."""

from .model import (
    Drivers,
    Flows,
    Forcing,
    Graph,
    Levers,
    Observations,
    Params,
    RegionState,
    State,
    WorldState,
    init_state,
    step,
)
from .scenario import ARCHETYPES, Scenario, synthetic_regions
from .simulate import Trajectory, make_forcing, simulate, simulate_ensemble

__version__ = "0.1.0"

__all__ = [
    "ARCHETYPES",
    "Drivers",
    "Flows",
    "Forcing",
    "Graph",
    "Levers",
    "Observations",
    "Params",
    "RegionState",
    "Scenario",
    "State",
    "Trajectory",
    "WorldState",
    "init_state",
    "make_forcing",
    "simulate",
    "simulate_ensemble",
    "step",
    "synthetic_regions",
]
