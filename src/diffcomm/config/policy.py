"""The configs of `diffcomm optimize`: where the regions come from, the budget, the optimizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..archetypes import ARCHETYPES
from ..inputs import LEVERS
from .base import ModelConfig, RuntimeConfig, _number, _require, option
from .simulate import ScenarioConfig

OBJECTIVE_PARTS = ("development", "patents", "catchment", "above_critical_mass", "inequality")
"""The parts a policy objective may weight (`policy.objective_parts` computes them); `inequality`
is a penalty, its weight subtracts."""

UNCERTAINTY = ("none", "laplace", "posterior")
"""`policy.uncertainty`: optimise for the calibration's estimate, or the expected objective over
draws from its Laplace approximation or its NUTS posterior."""


@dataclass
class PolicyConfig:
    """A budget of levers: which, at what unit cost, how much, judged by which objective."""

    years: int = option(20, "years the budget is spread over, and simulated (scenario.years is not used by optimize)")
    budget: float = option(200.0, "total spending over the horizon (lever units x unit costs)")
    levers: list[str] = option(help="levers that may be funded", factory=lambda: list(LEVERS))
    costs: dict[str, float] = option(help="cost of one unit (one sd of the driver) per region-year; default 1", factory=lambda: {
        "education": 1.0, "openness": 1.0, "middleground": 0.5, "place_policy": 0.5, "connecting": 0.5, "spawning": 1.0})
    cap: float | None = option(None, "most spending one cell (region x lever [x year]) may receive; null: none")
    region_cap: float | None = option(None, "most spending one region may receive, all levers and years; null: none")
    time_varying: bool = option(False, "one allocation per year, or one spread evenly over the years")
    discount: float = option(0.97, "yearly discount factor of the objective")
    objective: dict[str, float] = option(help=f"part -> weight; parts: {', '.join(OBJECTIVE_PARTS)}",
                                         factory=lambda: {"development": 1.0})
    uncertainty: str = option("none", "none: the calibration's estimate only; laplace or posterior (its NUTS draws): "
                                      "maximise the expected objective over policy.draws draws (source=run)")
    draws: int = option(8, "parameter draws the expected objective averages over (with policy.uncertainty)")
    holdout_draws: int = option(64, "other draws the robust and the estimate's optimal allocations are evaluated on")

    def __post_init__(self):
        _require(self.years >= 1, "policy.years", ">= 1", self.years)
        _require(_number(self.budget) and self.budget >= 0, "policy.budget", "a finite number >= 0", self.budget)
        _require(len(self.levers) > 0, "policy.levers", "at least one lever", self.levers)
        for name in self.levers:
            _require(name in LEVERS, "policy.levers", f"names from {list(LEVERS)}", name)
        for name, cost in self.costs.items():
            _require(name in LEVERS, f"policy.costs.{name}", f"a lever name from {list(LEVERS)}", name)
            _require(_number(cost) and cost > 0, f"policy.costs.{name}", "a positive unit cost", cost)
        _require(self.cap is None or self.cap > 0, "policy.cap", "null or > 0", self.cap)
        _require(self.region_cap is None or self.region_cap > 0, "policy.region_cap", "null or > 0", self.region_cap)
        _require(0 < self.discount <= 1, "policy.discount", "in (0, 1]", self.discount)
        _require(bool(self.objective), "policy.objective", "at least one weighted part", self.objective)
        for name, weight in self.objective.items():
            _require(name in OBJECTIVE_PARTS, f"policy.objective.{name}", f"a part from {list(OBJECTIVE_PARTS)}", name)
            _require(_number(weight) and weight >= 0, f"policy.objective.{name}", "a weight >= 0", weight)
        _require(self.uncertainty in UNCERTAINTY, "policy.uncertainty", f"one of {list(UNCERTAINTY)}", self.uncertainty)
        _require(self.draws >= 1, "policy.draws", ">= 1", self.draws)
        _require(self.holdout_draws >= 2, "policy.holdout_draws", ">= 2", self.holdout_draws)


@dataclass
class OptimizeSettings:
    steps: int = option(150, "mirror-ascent steps (one simulation with its gradient each)")
    learning_rate: float = option(0.5, "peak step: the most one step changes the log-ratio of two cells' spending")
    seed: int = option(0, "seed of the baselines")
    checkpoint_every: int = option(25, "steps between checkpoints")
    stop_after: int | None = option(None, "stop (checkpointed) after this many steps; rerun to resume")
    baselines: bool = option(True, "uniform, proportional to size, random search, evolution strategy")
    progress: bool = option(True, "show progress")

    def __post_init__(self):
        _require(self.steps >= 1, "optimize.steps", ">= 1", self.steps)
        _require(_number(self.learning_rate) and self.learning_rate > 0, "optimize.learning_rate", "> 0", self.learning_rate)
        _require(self.checkpoint_every >= 1, "optimize.checkpoint_every", ">= 1", self.checkpoint_every)


@dataclass
class OptimizeConfig:
    source: str = option("scenario", "scenario: synthetic regions; run: the calibrated regions of `run`")
    run: str | None = option(None, "with source=run: a folder written by diffcomm calibrate")
    model: ModelConfig = option(factory=lambda: ModelConfig(x64=True))
    scenario: ScenarioConfig = option(factory=lambda: ScenarioConfig(counts={name: 4 for name in ARCHETYPES}))
    policy: PolicyConfig = option(factory=PolicyConfig)
    optimize: OptimizeSettings = option(factory=OptimizeSettings)
    runtime: RuntimeConfig = option(factory=RuntimeConfig)

    def __post_init__(self):
        _require(self.source in ("scenario", "run"), "source", "scenario or run", self.source)
        if self.source == "run":
            _require(self.run is not None and Path(self.run).is_dir(), "run",
                     "an existing calibrated run folder (run=<folder>) when source=run", self.run)
        _require(self.policy.uncertainty == "none" or self.source == "run", "policy.uncertainty",
                 "none unless source=run (a scenario has no parameter draws)", self.policy.uncertainty)
