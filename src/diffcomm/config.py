"""Typed configuration: one dataclass per concept, each default in one place, checked on creation.

These dataclasses are both Hydra's schemas (`conf/*.yaml` only choose group options and state
what a command changes) and what the library takes: `calibrate(dataset, CalibrateConfig())`
needs no Hydra. Every class checks its values in `__post_init__` and raises `ConfigError` with
the full key (`fit.restarts must be >= 1, got 0`), so a bad value is refused where it enters,
whether from the command line or from Python.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .inputs import LEVERS
from .params import PARAMETERS, check_natural
from .policy import OBJECTIVE_PARTS
from .scenario import ARCHETYPES


def option(default: Any = None, help: str = "", *, factory=None):  # noqa: A002  (the word the help screen uses)
    """A config field with its one-line help (shown by `diffcomm <command> --help`)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _require(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _share(x) -> bool:
    return _number(x) and 0.0 <= x <= 1.0

# --------------------------------------------------------------------------------------------
# The model and the synthetic scenario
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    num_domains: int = option(3, "K: industry or technology domains")
    params: dict[str, Any] = option(help="natural-scale parameter values by name (+model.params.NAME=VALUE)", factory=dict)
    x64: bool = option(False, "double precision for this run (slower; the Hessian and exact budgets need it)")

    def __post_init__(self):
        _require(isinstance(self.num_domains, int) and self.num_domains >= 1, "model.num_domains", "a positive integer", self.num_domains)
        try:
            check_natural(self.num_domains, dict(self.params))
        except ValueError as error:
            raise ConfigError(f"model.params: {error}") from None


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
        if self.shock.intensity > 0 and self.shock.duration > 0:  # a shock that would never hit is a mistake
            _require(self.shock.start <= self.years, "scenario.shock.start",
                     f"a year within the {self.years} simulated (scenario.years) for a shock to hit", self.shock.start)


@dataclass
class OutputConfig:
    csv: bool = option(True, "write the tidy table of trajectories")
    format: str = option("csv", "format of that table: csv, or parquet (columnar, for large runs)")
    figures: bool = option(True, "trajectories.png")

    def __post_init__(self):
        _require(self.format in ("csv", "parquet"), "output.format", "csv or parquet", self.format)


@dataclass
class RuntimeConfig:
    compilation_cache: str | None = option("auto", "folder of compiled programs kept between runs; auto: the "
                                                   "user cache folder; null: none")


@dataclass
class SimulateConfig:
    model: ModelConfig = option(factory=ModelConfig)
    scenario: ScenarioConfig = option(factory=ScenarioConfig)
    output: OutputConfig = option(factory=OutputConfig)
    runtime: RuntimeConfig = option(factory=RuntimeConfig)


# --------------------------------------------------------------------------------------------
# Data, calibration, forecasts
# --------------------------------------------------------------------------------------------


@dataclass
class DriverTerm:
    """One covariate feeding a driver.

    `transform`: identity, log or log1p, applied after dividing by population in thousands if
    `per_capita` (a value per 1,000 residents; for R&D in thousand USD, USD per resident).
    `missing`: what a missing cell means: `zero` (the quantity is absent, e.g. no university R&D
    reported), `mean` (unknown: the mean of the observed values), or `error`.
    """

    column: str
    transform: str = "identity"
    per_capita: bool = False
    missing: str = "error"

    def check(self, key: str) -> None:
        _require(isinstance(self.column, str) and bool(self.column), f"{key}.column", "a covariate column name", self.column)
        _require(self.transform in ("identity", "log", "log1p"), f"{key}.transform", "identity, log or log1p", self.transform)
        _require(self.missing in ("zero", "mean", "error"), f"{key}.missing", "zero, mean or error", self.missing)


def _us_cbsa_drivers() -> dict[str, list[DriverTerm]]:
    """The driver proxies of the shipped US metro data (docs/data.md says why each)."""
    return {
        "educating": [DriverTerm("univ_rd_total", "log1p", per_capita=True, missing="zero"),  # no HERD row = none
                      DriverTerm("share_bachelor_plus")],
        "migrating": [DriverTerm("newcomers_baplus_per_1k", "log", missing="mean")],
        "connecting": [DriverTerm("exports_share_gdp_2017", "log", missing="mean"), DriverTerm("population", "log")],
        "amenities": [DriverTerm("median_household_income", "log")],
        "spawning_share": [DriverTerm("vc_musd_per_1m_2015_17", "log1p", missing="zero")],  # no VC row = no deals
    }


@dataclass
class DataConfig:
    """Where the observations come from and how covariates become drivers. Paths are relative
    to the data shipped in the package (`diffcomm/datasets`) unless absolute or existing."""

    name: str = option("us_cbsa", "a label for the data")
    patents: str = option("us_cbsa/patents.csv", "long CSV with columns cbsa_code, cbsa_name, year, patents")
    covariates: str = option("us_cbsa/covariates.csv", "one row per region (cbsa_code and covariate columns)")
    covariate_duplicates: str = option("first", "a repeated region in the covariates: error, or first (keep the first)")
    clusters: str | None = option("us_cbsa/clusters_2016.csv", "cluster location quotients (specializing); null: none")
    linkages: str | None = option("us_msa_transfers/by_msa_period.csv", "local and non-local connections; null: none")
    linkage_period: str = option("2000-2023", "the period of the linkage counts")
    edges: str | None = option("us_msa_transfers/intercity_edges.csv", "cross-local ties; null: none")
    edge_period: str = option("2000-2023", "the period of the tie edges")
    first_year: int = option(2000, "first year: sets the initial state; later years are fitted")
    last_year: int = option(2010, "last year fitted")
    min_edge_weight: float = option(1.0, "ties with fewer transfers are dropped")
    max_patents: float = option(1e6, "largest plausible patent count of one region-year; larger cells are refused")
    regions: list[str] = option(help="region codes to keep (5 digits, quoted); empty: all", factory=list)
    drivers: dict[str, list[DriverTerm]] = option(help="driver -> covariate terms (the mean of their z-scores)",
                                                  factory=_us_cbsa_drivers)

    def __post_init__(self):
        for key in ("first_year", "last_year"):
            _require(1800 <= getattr(self, key) <= 2100, f"data.{key}", "a calendar year", getattr(self, key))
        _require(self.first_year < self.last_year, "data.last_year", f"after data.first_year ({self.first_year})", self.last_year)
        duplicates = self.covariate_duplicates
        _require(duplicates in ("error", "first"), "data.covariate_duplicates", "error or first", duplicates)
        _require(_number(self.min_edge_weight) and self.min_edge_weight >= 0, "data.min_edge_weight", ">= 0", self.min_edge_weight)
        _require(_number(self.max_patents) and self.max_patents > 0, "data.max_patents", "> 0", self.max_patents)
        for code in self.regions:
            _require(bool(re.fullmatch(r"\d{5}", str(code))), "data.regions",
                     "5-digit region codes (quote codes with leading zeros, e.g. ['00901'])", code)
        for driver, terms in self.drivers.items():
            for i, term in enumerate(terms):
                key = f"data.drivers.{driver}[{i}]"
                if isinstance(term, dict):  # OmegaConf leaves dataclasses inside a dict of lists as dicts
                    unknown = sorted(set(term) - {f.name for f in fields(DriverTerm)})
                    _require(not unknown, key, "keys column, transform, per_capita, missing", unknown)
                    _require("column" in term, f"{key}.column", "a covariate column name", None)
                    term = terms[i] = DriverTerm(**term)
                term.check(key)


@dataclass
class OptimizerConfig:
    transform: dict[str, Any] = option(help="an optax transformation for Hydra to instantiate (_target_: ...); "
                                            "empty: Adam with warm-up and cosine decay", factory=dict)


@dataclass
class FitConfig:
    """How to fit: several starts as one batch, early stopping, a polish, checkpoints."""

    free: list[str] = option(help="the parameters fitted; the others keep model.params or their defaults", factory=lambda: [
        "inflow_bias", "connecting_weight", "educating_weight", "migrating_weight", "specializing_weight",
        "amenity_weight", "buzz_scale", "ubiquitification", "patents_intercept", "patents_dispersion",
        "nonlocal_intercept", "nonlocal_connectedness_slope", "nonlocal_overlap_slope", "nonlocal_concentration"])
    restarts: int = option(4, "starts fitted together as one vmapped batch")
    steps: int = option(1000, "largest number of optimizer steps")
    spread: float = option(0.3, "sd of the perturbation of the starts (unconstrained scale)")
    patience: int = option(100, "stop after this many steps without a relative improvement > tolerance")
    tolerance: float = option(1e-6, "relative improvement that counts (>= 0)")
    checkpoint_every: int = option(50, "steps between checkpoints")
    seed: int = option(0, "seed of the starts and of the predictive draws")
    stop_after: int | None = option(None, "stop (checkpointed) after this many steps; rerun the same command to resume")
    prior_scale: float | None = option(1.0, "sd of the Gaussian prior around the defaults (unconstrained scale); null: none")
    polish_steps: int = option(300, "L-BFGS steps from the best start (0: none)")
    progress: bool = option(True, "show progress")

    def __post_init__(self):
        _require(len(self.free) > 0, "fit.free", "at least one parameter", self.free)
        for name in self.free:
            _require(name in PARAMETERS, "fit.free", "names of model parameters (see docs/model.md)", name)
        for key in ("restarts", "steps", "patience", "checkpoint_every"):
            _require(getattr(self, key) >= 1, f"fit.{key}", ">= 1", getattr(self, key))
        _require(self.spread >= 0, "fit.spread", ">= 0", self.spread)
        _require(_number(self.tolerance) and self.tolerance >= 0, "fit.tolerance", ">= 0", self.tolerance)
        _require(self.stop_after is None or self.stop_after >= 0, "fit.stop_after", "null or >= 0", self.stop_after)
        _require(self.prior_scale is None or self.prior_scale > 0, "fit.prior_scale", "> 0 or null", self.prior_scale)
        _require(self.polish_steps >= 0, "fit.polish_steps", ">= 0", self.polish_steps)


@dataclass
class EvaluationConfig:
    rolling_origin: bool = option(True, "fit through train_last_year, forecast the rest, score against baselines")
    train_last_year: int = option(2007, "last year of the rolling-origin fit")
    draws: int = option(200, "parameter draws for predictive intervals")
    level: float = option(0.9, "central predictive interval")
    largest_regions: int = option(12, "regions drawn one by one in the figures")

    def __post_init__(self):
        _require(0 < self.level < 1, "evaluation.level", "a share in (0, 1)", self.level)
        _require(self.draws >= 10, "evaluation.draws", ">= 10", self.draws)
        _require(self.largest_regions >= 1, "evaluation.largest_regions", ">= 1", self.largest_regions)


@dataclass
class CalibrateConfig:
    model: ModelConfig = option(factory=lambda: ModelConfig(num_domains=1, x64=True))
    data: DataConfig = option(factory=DataConfig)
    optimizer: OptimizerConfig = option(factory=OptimizerConfig)
    fit: FitConfig = option(factory=FitConfig)
    evaluation: EvaluationConfig = option(factory=EvaluationConfig)
    runtime: RuntimeConfig = option(factory=RuntimeConfig)

    def __post_init__(self):
        d, e = self.data, self.evaluation
        if e.rolling_origin:
            _require(d.first_year < e.train_last_year < d.last_year, "evaluation.train_last_year",
                     f"strictly between data.first_year ({d.first_year}) and data.last_year ({d.last_year})",
                     e.train_last_year)


def parse_years(text: str, key: str = "years") -> tuple[int, int]:
    """'2011-2015' -> (2011, 2015); a single year is a span of one."""
    match = re.fullmatch(r"\s*(\d{4})\s*(?:-\s*(\d{4}))?\s*", str(text))
    if not match:
        raise ConfigError(f"{key} must look like 2011-2015, got {text!r}")
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    if last < first:
        raise ConfigError(f"{key}: the last year {last} comes before the first {first}")
    return first, last


@dataclass
class ForecastConfig:
    run: str = option("???", "a folder written by diffcomm calibrate")
    years: str = option("???", "first-last, e.g. 2011-2015 (years inside the data give fitted values)")
    draws: int = option(200, "parameter draws from the Laplace approximation")
    level: float = option(0.9, "central predictive interval")
    seed: int = option(0, "seed of the draws")
    x64: bool = option(True, "double precision for this run")
    runtime: RuntimeConfig = option(factory=RuntimeConfig)

    def __post_init__(self):
        parse_years(self.years)
        _require(self.draws >= 10, "draws", ">= 10", self.draws)
        _require(0 < self.level < 1, "level", "a share in (0, 1)", self.level)
        _require(Path(self.run).is_dir(), "run", "an existing calibrated run folder", self.run)


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------


@dataclass
class PolicyConfig:
    """A budget of levers: which, at what unit cost, how much, judged by which objective."""

    years: int = option(20, "years the budget is spread over")
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


@dataclass
class OptimizeSettings:
    steps: int = option(150, "projected-Adam steps")
    learning_rate: float = option(4.0, "relative: the largest steps move about learning_rate x budget / cells")
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
            _require(self.run is not None and Path(self.run).is_dir(), "run", "an existing calibrated run folder", self.run)


SCHEMAS = {"simulate": SimulateConfig, "calibrate": CalibrateConfig, "forecast": ForecastConfig,
           "optimize": OptimizeConfig}
