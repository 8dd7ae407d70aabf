"""Typed configuration: the door between Hydra's `DictConfig` and the library.

Hydra composes YAML from `conf/`; :func:`to_typed` merges it onto these dataclasses (so types are
checked) and :func:`validate` checks values, raising :class:`ConfigError` that names the key.
Nothing below the entry point takes a `DictConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


def conf_dir() -> Path:
    """The folder of Hydra configs: packaged with a wheel, or `conf/` at the repository root."""
    packaged = Path(__file__).parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "conf"


@dataclass
class ModelConfig:
    num_domains: int = 3
    params: dict[str, Any] = field(default_factory=dict)  # natural-scale values by parameter name
    x64: bool = False


@dataclass
class ShockConfig:
    intensity: float = 0.0  # xi in [0, 1]
    start: int = 20  # first year hit (1-based)
    duration: int = 2  # years
    archetypes: list[str] = field(default_factory=list)  # empty: every region


@dataclass
class LeversConfig:
    """Policy levers, constant over years, added to every region's drivers."""

    education: float = 0.0
    openness: float = 0.0
    middleground: float = 0.0
    place_policy: float = 0.0
    connecting: float = 0.0
    spawning: float = 0.0


@dataclass
class MneConfig:
    spawning_share: float | None = None  # phi in [0, 1] for every region; null: the archetype's own
    presence_scale: float = 1.0


@dataclass
class ScenarioConfig:
    name: str = "archetypes"
    counts: dict[str, int] = field(default_factory=dict)
    years: int = 50
    seed: int = 0
    noise: float = 0.3
    ties_per_region: int = 4
    shock: ShockConfig = field(default_factory=ShockConfig)
    levers: LeversConfig = field(default_factory=LeversConfig)
    mne: MneConfig = field(default_factory=MneConfig)


@dataclass
class OutputConfig:
    csv: bool = True
    figures: bool = True


@dataclass
class SimulateConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


@dataclass
class DriverTermConfig:
    column: str = "???"
    transform: str = "identity"  # identity, log, log1p
    per_capita: bool = False  # divide by population in thousands first
    missing: str = "error"  # zero, mean, error


@dataclass
class DataConfig:
    """Where the observations come from and how covariates become drivers (paths relative to
    the shipped data folder unless absolute)."""

    name: str = "us_cbsa"
    patents: str = "us_cbsa/patents.csv"
    covariates: str = "us_cbsa/covariates.csv"
    covariate_duplicates: str = "error"  # error, or first (keep the first row of a repeated region)
    clusters: str | None = "us_cbsa/clusters_2016.csv"
    linkages: str | None = "us_msa_transfers/by_msa_period.csv"
    linkage_period: str = "2000-2023"
    edges: str | None = "us_msa_transfers/intercity_edges.csv"
    edge_period: str = "2000-2023"
    first_year: int = 2000
    last_year: int = 2010
    min_edge_weight: float = 1.0
    regions: list[str] = field(default_factory=list)  # region codes to keep; empty: all
    drivers: Dict[str, List[DriverTermConfig]] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    name: str = "adam"
    line_search: bool = False  # true for optax.lbfgs
    transform: dict[str, Any] = field(default_factory=dict)  # instantiated with hydra: _target_ ...


@dataclass
class FitConfig:
    free: list[str] = field(default_factory=list)
    restarts: int = 4
    steps: int = 1000
    spread: float = 0.3
    patience: int = 100
    tolerance: float = 1e-6
    checkpoint_every: int = 50
    seed: int = 0
    stop_after: int | None = None
    prior_scale: float | None = 1.0  # sd of the Gaussian prior on the unconstrained scale; null: none
    polish_steps: int = 300  # L-BFGS steps from the best restart (0: none)
    progress: bool = True


@dataclass
class EvaluationConfig:
    rolling_origin: bool = True
    train_last_year: int = 2007  # fit through this year, forecast the rest of the data
    draws: int = 200
    level: float = 0.9
    largest_regions: int = 12


@dataclass
class CalibrateConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(num_domains=1, x64=True))
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


@dataclass
class ForecastConfig:
    run: str = "???"  # a calibrated run folder
    years: str = "???"  # e.g. 2011-2015
    draws: int = 200
    level: float = 0.9
    seed: int = 0


@dataclass
class PolicyConfig:
    """A budget of levers: which, at what unit cost, how much, judged by which objective."""

    years: int = 20
    budget: float = 200.0  # total spending over the horizon
    levers: list[str] = field(default_factory=lambda: ["education", "openness", "middleground", "place_policy",
                                                       "connecting", "spawning"])
    costs: dict[str, float] = field(default_factory=dict)  # unit cost per lever (per region-year); default 1
    cap: float | None = None  # most spending one cell (region x lever [x year]) may receive
    region_cap: float | None = None  # most spending one region may receive, all levers and years
    time_varying: bool = False  # one allocation per year, or one spread evenly over the years
    discount: float = 0.97
    objective: dict[str, float] = field(default_factory=lambda: {"development": 1.0})


@dataclass
class OptimizeSettings:
    steps: int = 150
    learning_rate: float = 4.0  # relative: largest step about learning_rate x budget / cells
    seed: int = 0
    checkpoint_every: int = 25
    stop_after: int | None = None
    baselines: bool = True
    progress: bool = True


@dataclass
class OptimizeConfig:
    source: str = "scenario"  # scenario (synthetic regions) or run (a calibrated run folder)
    run: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    optimize: OptimizeSettings = field(default_factory=OptimizeSettings)


SCHEMAS = {"simulate": SimulateConfig, "calibrate": CalibrateConfig, "forecast": ForecastConfig,
           "optimize": OptimizeConfig}


def parse_years(text: str, key: str = "years") -> tuple[int, int]:
    """'2011-2015' -> (2011, 2015); a single year is a span of one."""
    match = re.fullmatch(r"\s*(\d{4})\s*(?:-\s*(\d{4}))?\s*", str(text))
    if not match:
        raise ConfigError(f"{key} must look like 2011-2015, got {text!r}")
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    if last < first:
        raise ConfigError(f"{key}: the last year {last} comes before the first {first}")
    return first, last


def to_typed(cfg: DictConfig, schema: type) -> Any:
    """Merge a composed config onto its schema and return the dataclass, validated."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        typed = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error)) from None
    validate(typed)
    return typed


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    key = getattr(error, "full_key", None)
    first = text[0] if text else type(error).__name__
    return f"{key}: {first}" if key and key not in first else first


def _require(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def _unit(x) -> bool:
    return isinstance(x, (int, float)) and 0.0 <= x <= 1.0


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def validate(cfg: Any) -> None:
    """Check values that types cannot; raise `ConfigError` naming the first bad key."""
    from .scenario import ARCHETYPES

    if isinstance(cfg, SimulateConfig):
        validate_model(cfg.model)
        s = cfg.scenario
        _require(bool(s.counts), "scenario.counts", "a non-empty map of archetype -> count", s.counts)
        for name, n in s.counts.items():
            _require(name in ARCHETYPES, f"scenario.counts.{name}", f"one of {sorted(ARCHETYPES)}", name)
            _require(n >= 0, f"scenario.counts.{name}", "a non-negative count", n)
        _require(sum(s.counts.values()) > 0, "scenario.counts", "at least one region in all", s.counts)
        _require(s.years >= 1, "scenario.years", "a positive number of years", s.years)
        _require(s.noise >= 0, "scenario.noise", ">= 0", s.noise)
        _require(s.ties_per_region >= 0, "scenario.ties_per_region", ">= 0", s.ties_per_region)
        _require(_unit(s.shock.intensity), "scenario.shock.intensity", "a share in [0, 1]", s.shock.intensity)
        _require(s.shock.start >= 1, "scenario.shock.start", "a year >= 1", s.shock.start)
        _require(s.shock.duration >= 0, "scenario.shock.duration", ">= 0 years", s.shock.duration)
        for name in s.shock.archetypes:
            _require(name in ARCHETYPES, "scenario.shock.archetypes", f"names from {sorted(ARCHETYPES)}", name)
        for f in dataclasses.fields(s.levers):
            value = getattr(s.levers, f.name)
            _require(_finite(value), f"scenario.levers.{f.name}", "a finite number", value)
        _require(s.levers.spawning >= 0, "scenario.levers.spawning", ">= 0", s.levers.spawning)
        phi = s.mne.spawning_share
        _require(phi is None or _unit(phi), "scenario.mne.spawning_share", "null or a share in [0, 1]", phi)
        _require(s.mne.presence_scale >= 0, "scenario.mne.presence_scale", ">= 0", s.mne.presence_scale)
    elif isinstance(cfg, ModelConfig):
        validate_model(cfg)
    elif isinstance(cfg, CalibrateConfig):
        validate_model(cfg.model)
        d = cfg.data
        _require(d.first_year < d.last_year, "data.last_year", f"after data.first_year ({d.first_year})", d.last_year)
        _require(d.covariate_duplicates in ("error", "first"), "data.covariate_duplicates", "error or first", d.covariate_duplicates)
        _require(d.min_edge_weight >= 0, "data.min_edge_weight", ">= 0", d.min_edge_weight)
        for code in d.regions:
            _require(bool(re.fullmatch(r"\d{5}", str(code))), "data.regions",
                     "5-digit region codes (quote codes with leading zeros, e.g. ['00901'])", code)
        for driver, terms in d.drivers.items():
            for i, term in enumerate(terms):
                key = f"data.drivers.{driver}[{i}]"
                if isinstance(term, dict):  # OmegaConf leaves dataclasses nested in dict-of-lists as dicts
                    unknown = sorted(set(term) - {f.name for f in dataclasses.fields(DriverTermConfig)})
                    _require(not unknown, key, "keys column, transform, per_capita, missing", unknown)
                    _require("column" in term, f"{key}.column", "a covariate column name", None)
                    term = terms[i] = DriverTermConfig(**term)
                _require(term.transform in ("identity", "log", "log1p"), f"{key}.transform", "identity, log or log1p", term.transform)
                _require(term.missing in ("zero", "mean", "error"), f"{key}.missing", "zero, mean or error", term.missing)
        from .model import Params

        known = {f.name for f in dataclasses.fields(Params)}
        for name in cfg.fit.free:
            _require(name in known, "fit.free", f"names of model parameters ({sorted(known)})", name)
        _require(len(cfg.fit.free) > 0, "fit.free", "at least one parameter", cfg.fit.free)
        f = cfg.fit
        for key, value in (("restarts", f.restarts), ("steps", f.steps), ("patience", f.patience)):
            _require(value >= 1, f"fit.{key}", ">= 1", value)
        _require(f.spread >= 0, "fit.spread", ">= 0", f.spread)
        _require(f.prior_scale is None or f.prior_scale > 0, "fit.prior_scale", "> 0 or null", f.prior_scale)
        _require(f.polish_steps >= 0, "fit.polish_steps", ">= 0", f.polish_steps)
        e = cfg.evaluation
        _require(0 < e.level < 1, "evaluation.level", "a share in (0, 1)", e.level)
        _require(e.draws >= 10, "evaluation.draws", ">= 10", e.draws)
        if e.rolling_origin:
            _require(d.first_year < e.train_last_year < d.last_year, "evaluation.train_last_year",
                     f"strictly between data.first_year ({d.first_year}) and data.last_year ({d.last_year})", e.train_last_year)
    elif isinstance(cfg, OptimizeConfig):
        from .policy import LEVERS, OBJECTIVE_PARTS

        _require(cfg.source in ("scenario", "run"), "source", "scenario or run", cfg.source)
        if cfg.source == "run":
            _require(cfg.run is not None and Path(cfg.run).is_dir(), "run", "an existing calibrated run folder", cfg.run)
        else:
            validate(SimulateConfig(model=cfg.model, scenario=cfg.scenario))
        p = cfg.policy
        _require(p.years >= 1, "policy.years", ">= 1", p.years)
        _require(_finite(p.budget) and p.budget >= 0, "policy.budget", "a finite number >= 0", p.budget)
        _require(len(p.levers) > 0, "policy.levers", "at least one lever", p.levers)
        for name in p.levers:
            _require(name in LEVERS, "policy.levers", f"names from {list(LEVERS)}", name)
        for name, cost in p.costs.items():
            _require(name in LEVERS, f"policy.costs.{name}", f"a lever name from {list(LEVERS)}", name)
            _require(_finite(cost) and cost > 0, f"policy.costs.{name}", "a positive unit cost", cost)
        _require(p.cap is None or p.cap > 0, "policy.cap", "null or > 0", p.cap)
        _require(p.region_cap is None or p.region_cap > 0, "policy.region_cap", "null or > 0", p.region_cap)
        _require(0 < p.discount <= 1, "policy.discount", "in (0, 1]", p.discount)
        _require(bool(p.objective), "policy.objective", "at least one weighted part", p.objective)
        for name, weight in p.objective.items():
            _require(name in OBJECTIVE_PARTS, f"policy.objective.{name}", f"a part from {list(OBJECTIVE_PARTS)}", name)
            _require(_finite(weight) and weight >= 0, f"policy.objective.{name}", "a weight >= 0", weight)
        o = cfg.optimize
        _require(o.steps >= 1, "optimize.steps", ">= 1", o.steps)
        _require(o.learning_rate > 0, "optimize.learning_rate", "> 0", o.learning_rate)
    elif isinstance(cfg, ForecastConfig):
        parse_years(cfg.years)
        _require(cfg.draws >= 10, "draws", ">= 10", cfg.draws)
        _require(0 < cfg.level < 1, "level", "a share in (0, 1)", cfg.level)
        _require(Path(cfg.run).is_dir(), "run", "an existing calibrated run folder", cfg.run)


def validate_model(model: ModelConfig) -> None:
    from .model import Params

    _require(model.num_domains >= 1, "model.num_domains", "a positive integer", model.num_domains)
    try:
        Params.from_natural(model.num_domains, **dict(model.params))
    except ValueError as error:
        raise ConfigError(f"model.params: {error}") from None


# --------------------------------------------------------------------------------------------
# Config -> library objects
# --------------------------------------------------------------------------------------------


def build_params(model: ModelConfig):
    """`Params` from the model config (natural-scale values, defaults for the rest)."""
    from .model import Params

    return Params.from_natural(model.num_domains, **dict(model.params))


def build_scenario(params, scenario: ScenarioConfig):
    """Synthetic regions from the scenario config."""
    import jax

    from .scenario import synthetic_regions

    return synthetic_regions(
        params,
        dict(scenario.counts),
        key=jax.random.key(scenario.seed),
        noise=scenario.noise,
        ties_per_region=scenario.ties_per_region,
        spawning_share=scenario.mne.spawning_share,
        mne_presence_scale=scenario.mne.presence_scale,
    )


def build_forcing(scenario_cfg: ScenarioConfig, scenario):
    """Levers (constant over years) and the shock window from the scenario config."""
    import jax.numpy as jnp
    import numpy as np

    from .model import Levers
    from .simulate import make_forcing

    years, num_regions = scenario_cfg.years, scenario.num_regions
    shock_cfg = scenario_cfg.shock
    hit = np.ones(num_regions, bool)
    if shock_cfg.archetypes:
        chosen = [i for i, n in enumerate(scenario.archetype_names) if n in shock_cfg.archetypes]
        hit = np.isin(scenario.archetype, chosen)
    window = np.zeros(years)
    window[shock_cfg.start - 1 : shock_cfg.start - 1 + shock_cfg.duration] = shock_cfg.intensity
    shock = jnp.asarray(window[:, None] * hit[None, :])
    levers = Levers(**{f.name: getattr(scenario_cfg.levers, f.name) for f in dataclasses.fields(LeversConfig)})
    return make_forcing(years, num_regions, levers=levers, shock=shock)
