"""The configs of `diffcomm simulate`: the synthetic scenario and what to write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..archetypes import ARCHETYPES
from ..inputs import LEVERS
from .base import ModelConfig, RuntimeConfig, _number, _require, _share, option

MAX_REGION_YEARS = 100_000_000  # about 9 GB of recorded states in float32


@dataclass
class ShockConfig:
    intensity: float = option(0.0, "xi in [0, 1]: share of tangible flows a disruption stops")
    start: int = option(20, "first year hit (1 = the first simulated year)")
    duration: int = option(2, "years hit")
    archetypes: list[str] = option(help="archetypes hit; empty: every region", factory=list)

    def __post_init__(self):
        _require(_share(self.intensity), "scenario.shock.intensity", "a share in [0, 1]", self.intensity)
        _require(self.start >= 1, "scenario.shock.start", "a year >= 1", self.start)
        _require(self.duration >= 0, "scenario.shock.duration", ">= 0 years", self.duration)
        for name in self.archetypes:
            _require(name in ARCHETYPES, "scenario.shock.archetypes", f"names from {sorted(ARCHETYPES)}", name)


@dataclass
class MneConfig:
    spawning_share: float | None = option(None, "phi in [0, 1] for every region; null: each archetype's own")
    presence_scale: float = option(1.0, "multiplies every region's MNE presence (>= 0)")

    def __post_init__(self):
        phi = self.spawning_share
        _require(phi is None or _share(phi), "scenario.mne.spawning_share", "null or a share in [0, 1]", phi)
        scale = self.presence_scale
        _require(_number(scale) and scale >= 0, "scenario.mne.presence_scale", ">= 0", scale)


@dataclass
class ScenarioConfig:
    name: str = option("archetypes", "a label for the run")
    counts: dict[str, int] = option(help="regions per archetype", factory=lambda: {name: 20 for name in ARCHETYPES})
    years: int = option(50, "years simulated")
    seed: int = option(0, "seed of the synthetic regions")
    noise: float = option(0.3, "sd of region-level noise on z-scored drivers")
    ties_per_region: int = option(4, "incoming cross-local ties per region")
    shock: ShockConfig = option(help="a disruption", factory=ShockConfig)
    levers: dict[str, float] = option(help="policy levers added to every region's drivers, every year",
                                      factory=lambda: {name: 0.0 for name in LEVERS})
    mne: MneConfig = option(help="MNE strategy", factory=MneConfig)

    def __post_init__(self):
        _require(bool(self.counts), "scenario.counts", "a non-empty map of archetype -> count", self.counts)
        for name, n in self.counts.items():
            _require(name in ARCHETYPES, f"scenario.counts.{name}", f"one of {sorted(ARCHETYPES)}", name)
            _require(isinstance(n, int) and n >= 0, f"scenario.counts.{name}", "a non-negative count", n)
        _require(sum(self.counts.values()) > 0, "scenario.counts", "at least one region in all", self.counts)
        _require(self.years >= 1, "scenario.years", "a positive number of years", self.years)
        _require(self.noise >= 0, "scenario.noise", ">= 0", self.noise)
        _require(self.ties_per_region >= 0, "scenario.ties_per_region", ">= 0", self.ties_per_region)
        for name, value in self.levers.items():
            _require(name in LEVERS, f"scenario.levers.{name}", f"a lever from {list(LEVERS)}", name)
            _require(_number(value), f"scenario.levers.{name}", "a finite number", value)
        _require(self.levers.get("spawning", 0.0) >= 0, "scenario.levers.spawning", ">= 0", self.levers.get("spawning"))
        _require(self.years <= 10_000, "scenario.years", "at most 10000", self.years)
        regions = sum(self.counts.values())
        _require(regions * self.years <= MAX_REGION_YEARS, "scenario.counts",
                 f"at most {MAX_REGION_YEARS:.0e} region-years in all (regions x scenario.years), to fit in memory",
                 f"{regions} regions x {self.years} years")
        shock = self.shock
        if shock.intensity > 0:  # a shock asked for must hit someone
            _require(shock.duration >= 1, "scenario.shock.duration", ">= 1 year for a shock of intensity > 0", shock.duration)
            _require(shock.start <= self.years, "scenario.shock.start",
                     f"a year within the {self.years} simulated (scenario.years) for a shock to hit", shock.start)
            hit = [name for name in shock.archetypes if self.counts.get(name, 0) > 0]
            _require(not shock.archetypes or bool(hit), "scenario.shock.archetypes",
                     "archetypes with regions (scenario.counts) for a shock to hit", shock.archetypes)


@dataclass
class OutputConfig:
    csv: bool = option(True, "write the tidy table of trajectories")
    format: str = option("csv", "format of that table: csv, or parquet (columnar, for large runs)")
    figures: bool = option(True, "trajectories.png")

    def __post_init__(self):
        _require(self.format in ("csv", "parquet"), "output.format", "csv or parquet", self.format)


@dataclass
class EnsembleConfig:
    draws: int = option(0, "parameter draws of the run (run=...): its NUTS draws if it has them, else Laplace; 0: the estimate")
    scenarios: list[Any] = option(
        help="lever settings added to scenario.levers, one scenario each, e.g. [{},{middleground:1}]", factory=list)
    seed: int = option(0, "seed of the parameter draws")
    chunk: int | None = option(None, "draws per compiled call; null: as many as keep about 256 MB of trajectories")

    def __post_init__(self):
        _require(isinstance(self.draws, int) and self.draws >= 0, "ensemble.draws", "a count >= 0", self.draws)
        _require(self.chunk is None or self.chunk >= 1, "ensemble.chunk", "null or a count >= 1", self.chunk)
        for i, setting in enumerate(self.scenarios):
            _require(isinstance(setting, dict), f"ensemble.scenarios[{i}]", "a map of lever -> amount, e.g. {middleground:1}",
                     setting)
            for name, value in setting.items():
                _require(name in LEVERS, f"ensemble.scenarios[{i}].{name}", f"a lever from {list(LEVERS)}", name)
                _require(_number(value), f"ensemble.scenarios[{i}].{name}", "a finite number", value)
            _require(setting not in self.scenarios[:i], f"ensemble.scenarios[{i}]", "a setting not given before", setting)


@dataclass
class SimulateConfig:
    model: ModelConfig = option(factory=ModelConfig)
    scenario: ScenarioConfig = option(factory=ScenarioConfig)
    run: str | None = option(None, "a folder written by diffcomm calibrate: simulate its regions after its last year")
    ensemble: EnsembleConfig = option(factory=EnsembleConfig)
    output: OutputConfig = option(factory=OutputConfig)
    runtime: RuntimeConfig = option(factory=RuntimeConfig)

    def __post_init__(self):
        if self.run is not None:
            _require(Path(self.run).is_dir(), "run", "an existing folder written by diffcomm calibrate", self.run)
            _require(not self.scenario.shock.archetypes, "scenario.shock.archetypes",
                     "empty with run=... (calibrated regions have no archetypes; a shock hits every region)",
                     self.scenario.shock.archetypes)
        for i, setting in enumerate(self.ensemble.scenarios):  # a scenario's levers add to scenario.levers
            total = self.scenario.levers.get("spawning", 0.0) + setting.get("spawning", 0.0)
            _require(total >= 0, f"ensemble.scenarios[{i}].spawning", ">= 0 with scenario.levers.spawning added", total)
        _require(self.run is not None or self.ensemble.draws == 0, "ensemble.draws",
                 "0 without run=<a calibrated run> (parameter draws come from a calibration)", self.ensemble.draws)

    @property
    def is_ensemble(self) -> bool:
        """Whether this run is an ensemble (`ensemble.py`) rather than one simulation with trajectories."""
        return self.run is not None or self.ensemble.draws > 0 or bool(self.ensemble.scenarios)
