"""The configs of `diffcomm calibrate` and `diffcomm forecast`: data, fit, evaluation."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..effects import REGION_EFFECTS
from ..errors import ConfigError
from ..inputs import NEUTRAL_DRIVERS
from ..params import PARAMETERS
from .base import ModelConfig, RuntimeConfig, _number, _require, option


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

    def __post_init__(self):
        key = "driver term"  # DataConfig names the full key (data.drivers.<driver>[<i>])
        _require(isinstance(self.column, str) and bool(self.column), f"{key}.column", "a covariate column name", self.column)
        _require(self.transform in ("identity", "log", "log1p"), f"{key}.transform", "identity, log or log1p", self.transform)
        _require(self.missing in ("zero", "mean", "error"), f"{key}.missing", "zero, mean or error", self.missing)


def _driver_term(key: str, term: DriverTerm | dict) -> DriverTerm:
    """A term as a `DriverTerm` (OmegaConf leaves those inside a dict of lists as dicts), its
    errors named by `key`."""
    if isinstance(term, DriverTerm):
        return term
    unknown = sorted(set(term) - {f.name for f in fields(DriverTerm)})
    _require(not unknown, key, "keys column, transform, per_capita, missing", unknown)
    _require("column" in term, f"{key}.column", "a covariate column name", None)
    try:
        return DriverTerm(**term)
    except ConfigError as error:
        raise ConfigError(str(error).replace("driver term", key, 1)) from None


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
    domain_panel: str | None = option(None, "a state x domain panel (columns of us_state_tech/panel.csv): calibrate K "
                                            "domains to it (data=us_state_tech); the metro files below are then unused")
    patents: str = option("us_cbsa/patents.csv", "long CSV with columns cbsa_code, cbsa_name, year, patents")
    covariates: str = option("us_cbsa/covariates.csv", "one row per region (cbsa_code and covariate columns)")
    covariate_duplicates: str = option("first", "a repeated region in the covariates: error, or first (keep the first)")
    clusters: str | None = option("us_cbsa/clusters_2016.csv", "cluster location quotients (specializing); null: none")
    linkages: str | None = option("us_msa_transfers/by_msa_period.csv", "local and non-local connections; null: none")
    linkage_period: str = option("2000-2023", "the period of the linkage counts")
    edges: str | None = option("us_msa_transfers/intercity_edges.csv", "cross-local ties; null: none")
    edge_period: str = option("2000-2023", "the period of the tie edges")
    initial_tie_period: str | None = option(None, "a period of the edge file whose transfers set each tie's strength in "
                                                  "the first year (log1p of the transfers, scaled to a mean of 0.05); "
                                                  "null: every tie starts at 0.05")
    first_year: int = option(2000, "first year: sets the initial state; later years are fitted")
    last_year: int = option(2010, "last year fitted")
    spin_up_years: int = option(0, "years the model runs with the first year's drivers before the first year, so that "
                                   "communities start near what their drivers sustain; knowledge is then set from the first "
                                   "year's counts (0: start from the data)")
    one_step_ahead: bool = option(False, "fit each year one step ahead: knowledge restarts every year from that year's "
                                         "observed counts, as a forecast restarts it at its origin (false: one free "
                                         "path from the first year; the state x field panel is always fitted one "
                                         "period ahead)")
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
        _require(isinstance(self.one_step_ahead, bool), "data.one_step_ahead", "true or false", self.one_step_ahead)
        spin = self.spin_up_years
        _require(isinstance(spin, int) and 0 <= spin <= 500, "data.spin_up_years", "an integer in 0-500", spin)
        weight = self.min_edge_weight
        _require(_number(weight) and weight >= 0, "data.min_edge_weight", ">= 0", weight)
        _require(_number(self.max_patents) and self.max_patents > 0, "data.max_patents", "> 0", self.max_patents)
        for code in self.regions:
            _require(bool(re.fullmatch(r"\d{5}", str(code))), "data.regions",
                     "5-digit region codes (quote codes with leading zeros, e.g. ['00901'])", code)
        for driver in self.drivers:
            _require(driver in NEUTRAL_DRIVERS, f"data.drivers.{driver}", f"a driver from {sorted(NEUTRAL_DRIVERS)} "
                     "(specializing comes from data.clusters)", driver)
        self.drivers = {driver: [_driver_term(f"data.drivers.{driver}[{i}]", term) for i, term in enumerate(terms)]
                        for driver, terms in self.drivers.items()}
        # a file found from here stays found
        for key in ("patents", "covariates", "clusters", "linkages", "edges", "domain_panel"):
            path = getattr(self, key)
            if path and Path(path).expanduser().exists():
                setattr(self, key, str(Path(path).expanduser().resolve()))


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
        "nonlocal_intercept", "nonlocal_connectedness_slope", "nonlocal_overlap_slope", "nonlocal_concentration",
        "attraction_scale", "buzz_quality_scale", "national_drift", "national_shock_scale", "national_persistence"])
    region_effects: list[str] = option(help="latent region effects fitted with the parameters (attraction, buzz_quality; "
                                            "the scale of one not fitted stays fixed); empty: none",
                                       factory=lambda: ["buzz_quality"])
    national_effects: bool = option(True, "fit national year effects on log patents")
    restarts: int = option(4, "starts fitted together as one vmapped batch")
    steps: int = option(400, "largest number of optimizer steps")
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
        for name in self.region_effects:
            _require(name in REGION_EFFECTS, "fit.region_effects", f"names from {list(REGION_EFFECTS)}", name)
        for key in ("restarts", "steps", "patience", "checkpoint_every"):
            _require(getattr(self, key) >= 1, f"fit.{key}", ">= 1", getattr(self, key))
        _require(self.spread >= 0, "fit.spread", ">= 0", self.spread)
        _require(_number(self.tolerance) and self.tolerance >= 0, "fit.tolerance", ">= 0", self.tolerance)
        _require(self.stop_after is None or self.stop_after >= 0, "fit.stop_after", "null or >= 0", self.stop_after)
        _require(self.prior_scale is None or self.prior_scale > 0, "fit.prior_scale", "> 0 or null", self.prior_scale)
        _require(self.polish_steps >= 0, "fit.polish_steps", ">= 0", self.polish_steps)


@dataclass
class EvaluationConfig:
    rolling_origin: bool = option(False, "also calibrate at each origin, forecast the next years and score the model "
                                         "against four baselines (evaluation.csv)")
    origins: list[int] = option(help="last fitted year of each rolling-origin fit", factory=lambda: [2005, 2006, 2007])
    horizon: int = option(3, "years forecast from each origin")
    draws: int = option(200, "parameter draws for predictive intervals")
    level: float = option(0.9, "central predictive interval")
    largest_regions: int = option(12, "regions drawn one by one in the figures")

    def __post_init__(self):
        _require(0 < self.level < 1, "evaluation.level", "a share in (0, 1)", self.level)
        _require(self.draws >= 10, "evaluation.draws", ">= 10", self.draws)
        _require(self.horizon >= 1, "evaluation.horizon", ">= 1", self.horizon)
        _require(len(self.origins) >= 1, "evaluation.origins", "at least one year", self.origins)
        _require(self.largest_regions >= 1, "evaluation.largest_regions", ">= 1", self.largest_regions)


PRECISIONS = ("float32", "float64")


@dataclass
class NutsConfig:
    """The full posterior by NUTS (`inference=nuts`, `posterior.py`)."""

    chains: int = option(4, "chains, run as one vmap")
    devices: int = option(0, "devices the chains are split over (jax.sharding; must divide nuts.chains); 0: as many as "
                             "divide nuts.chains, up to the devices there are (on CPU the command line makes one per core)")
    warmup: int = option(200, "warm-up steps per chain (the step size tuned by dual averaging, the metric learnt in windows; "
                              "200: the metros' draws mixed as after 300, 46 s sooner)")
    draws: int = option(650, "draws per chain after the warm-up (650: ESS about 600 for the slowest weight on the metros)")
    block: int = option(25, "draws between checkpoints and progress lines")
    rank: int = option(16, "eigen-directions of the exact curvature that correct the Laplace whitening")
    adapt_metric: bool = option(True, "learn the metric from the warm-up's draws (false: the Laplace whitening throughout)")
    metric_rank: int = option(4, "most directions over all coordinates the learnt metric stretches, where the warm-up's "
                                 "draws spread along them beyond chance (0: none)")
    centre_national: bool = option(True, "sample the national effects eta_t, not their innovations (false: the innovations)")
    max_doublings: int = option(8, "most tree doublings per transition (at most 2^max_doublings - 1 leapfrog steps)")
    early_doublings: int = option(5, "most tree doublings before the first metric is learnt (the Laplace whitening's "
                                     "metric; with adapt_metric)")
    target_acceptance: float = option(0.8, "acceptance rate the warm-up's dual averaging aims for (Stan's adapt_delta), "
                                              "and at which the draws' step is set from the warm-up's acceptance curve")
    simulation_precision: str = option("float32", "float32: the model's simulation in single precision, the likelihood "
                                       "in double (0.6 of the time a leapfrog step takes in double); float64: all double")
    seed: int = option(0, "seed of the starts and the chains")

    def __post_init__(self):
        _require(self.chains >= 1, "nuts.chains", ">= 1", self.chains)
        _require(self.devices >= 0 and (self.devices == 0 or self.chains % self.devices == 0), "nuts.devices",
                 f"0 (as many as there are) or a count that divides nuts.chains ({self.chains})", self.devices)
        _require(self.simulation_precision in PRECISIONS, "nuts.simulation_precision", " or ".join(PRECISIONS),
                 self.simulation_precision)
        _require(self.warmup >= 10, "nuts.warmup", ">= 10", self.warmup)
        _require(self.draws >= 4, "nuts.draws", ">= 4", self.draws)
        _require(self.block >= 1, "nuts.block", ">= 1", self.block)
        _require(self.rank >= 0, "nuts.rank", ">= 0", self.rank)
        _require(self.metric_rank >= 0, "nuts.metric_rank", ">= 0", self.metric_rank)
        _require(1 <= self.max_doublings <= 12, "nuts.max_doublings", "in 1-12", self.max_doublings)
        _require(1 <= self.early_doublings <= self.max_doublings, "nuts.early_doublings", f"in 1-nuts.max_doublings "
                 f"({self.max_doublings})", self.early_doublings)
        _require(0.0 < self.target_acceptance < 1.0, "nuts.target_acceptance", "in (0, 1)", self.target_acceptance)


INFERENCE = ("laplace", "nuts")


@dataclass
class CalibrateConfig:
    model: ModelConfig = option(factory=lambda: ModelConfig(num_domains=1, x64=True))
    data: DataConfig = option(factory=DataConfig)
    optimizer: OptimizerConfig = option(factory=OptimizerConfig)
    fit: FitConfig = option(factory=FitConfig)
    evaluation: EvaluationConfig = option(factory=EvaluationConfig)
    inference: str = option("laplace", "laplace: MAP with its Laplace approximation; nuts: also the full posterior by NUTS")
    nuts: NutsConfig = option(factory=NutsConfig)
    runtime: RuntimeConfig = option(factory=RuntimeConfig)

    def __post_init__(self):
        _require(self.inference in INFERENCE, "inference", " or ".join(INFERENCE), self.inference)
        _require(self.runtime.devices == 1 or self.nuts.devices <= 1, "nuts.devices", "0 or 1 with runtime.devices > 1 "
                 "(the regions are split over the devices then, not the chains)", self.nuts.devices)
        d, e = self.data, self.evaluation
        if d.domain_panel is None:
            _require(self.model.num_domains == 1, "model.num_domains", "1 for calibration on the metros (the data count all "
                     "of a region's patents together, so more domains would be copies of one)", self.model.num_domains)
        else:
            _require(not self.fit.region_effects, "fit.region_effects", "[] with data.domain_panel (the panel always "
                     "estimates each state-field community's attraction; the key names the metros' region effects)",
                     self.fit.region_effects)
            _require(self.inference == "laplace", "inference", "laplace with data.domain_panel (NUTS is not built for the "
                     "panel)", self.inference)
            _require(self.runtime.devices == 1, "runtime.devices", "1 with data.domain_panel (its 50 states need no "
                     "splitting)", self.runtime.devices)
            _require(d.spin_up_years == 0, "data.spin_up_years", "0 with data.domain_panel (every community starts in "
                     "balance at its observed size)", d.spin_up_years)
        low, high = d.first_year + 2, d.last_year - e.horizon
        for origin in e.origins if e.rolling_origin else ():  # unread without the evaluation (shorter years need no edit)
            _require(low <= high, "evaluation.origins", f"a year from data.first_year + 2 to data.last_year - "
                     f"evaluation.horizon, and {d.first_year}-{d.last_year} leaves none: widen the years, shorten "
                     "evaluation.horizon or set evaluation.rolling_origin=false", origin)
            _require(low <= origin <= high, "evaluation.origins", f"years from data.first_year + 2 ({low}) to "
                     f"data.last_year - evaluation.horizon ({high})", origin)

    @property
    def chain_devices(self) -> int:
        """`nuts.devices`, or 1 where the regions are split over the devices (`runtime.devices`)."""
        return self.nuts.devices if self.runtime.devices == 1 else 1


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
