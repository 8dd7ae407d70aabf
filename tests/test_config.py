"""Typed configs: one default per value, checked where they are made, errors naming the full key."""

import dataclasses

import pytest
import yaml

from diffcomm.cli import conf_dir
from diffcomm.config import (
    SCHEMAS,
    CalibrateConfig,
    DataConfig,
    DriverTerm,
    EvaluationConfig,
    FitConfig,
    ForecastConfig,
    ModelConfig,
    NutsConfig,
    OptimizeConfig,
    OptimizerConfig,
    PolicyConfig,
    RuntimeConfig,
    ScenarioConfig,
    from_dict,
    parse_years,
)
from diffcomm.errors import ConfigError
from diffcomm.inputs import LEVERS


@pytest.mark.parametrize("name", [n for n in SCHEMAS if n != "forecast"])
def test_every_command_config_has_usable_defaults(name):
    SCHEMAS[name]()  # checks its own values on creation


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FitConfig(restarts=0), "fit.restarts must be >= 1, got 0"),
        (lambda: FitConfig(free=["educating_weight", "nope"]), "fit.free must be names of model parameters"),
        (lambda: FitConfig(tolerance=-1.0), "fit.tolerance must be >= 0"),
        (lambda: EvaluationConfig(level=1.5), "evaluation.level must be a share in (0, 1)"),
        (lambda: ModelConfig(params={"buzz_scale": -1.0}), "model.params: parameter 'buzz_scale' must be finite and > 0"),
        (lambda: ModelConfig(num_domains=0), "model.num_domains must be a positive integer"),
        (lambda: DataConfig(first_year=-5), "data.first_year must be a calendar year, got -5"),
        (lambda: DataConfig(first_year=2005, last_year=2003), "data.last_year must be after data.first_year (2005)"),
        (lambda: DataConfig(regions=["901"]), "data.regions must be 5-digit region codes"),
        (lambda: DataConfig(drivers={"educating": [{"column": "x", "transfrom": "log"}]}),
         "data.drivers.educating[0] must be keys"),
        (lambda: DataConfig(drivers={"educating": [{"column": "x", "missing": "maybe"}]}), "data.drivers.educating[0].missing"),
        (lambda: DriverTerm("x", missing="maybe"), "driver term.missing must be zero, mean or error"),
        (lambda: DataConfig(drivers={"educatng": []}), "data.drivers.educatng must be a driver from"),
        (lambda: CalibrateConfig(model=ModelConfig(num_domains=3, x64=True)), "model.num_domains must be 1 for calibration"),
        (lambda: CalibrateConfig(evaluation=EvaluationConfig(rolling_origin=True, origins=[2009])),
         "evaluation.origins must be years from data.first_year + 2 (2002) to data.last_year - evaluation.horizon (2007)"),
        (lambda: CalibrateConfig(data=DataConfig(first_year=2008), evaluation=EvaluationConfig(rolling_origin=True)),
         "2008-2010 leaves none: widen the years, shorten evaluation.horizon or set evaluation.rolling_origin=false"),
        (lambda: FitConfig(region_effects=["charisma"]), "fit.region_effects must be names from"),
        (lambda: CalibrateConfig(data=DataConfig(domain_panel="us_state_tech/panel.csv", spin_up_years=5),
                                 fit=FitConfig(region_effects=[])), "data.spin_up_years must be 0 with data.domain_panel"),
        (lambda: CalibrateConfig(inference="mcmc"), "inference must be laplace or nuts, got 'mcmc'"),
        (lambda: NutsConfig(chains=0), "nuts.chains must be >= 1, got 0"),
        (lambda: NutsConfig(target_acceptance=1.0), "nuts.target_acceptance must be in (0, 1), got 1.0"),
        (lambda: NutsConfig(early_doublings=9), "nuts.early_doublings must be in 1-nuts.max_doublings (8), got 9"),
        (lambda: NutsConfig(simulation_precision="half"), "nuts.simulation_precision must be float32 or float64, got 'half'"),
        (lambda: NutsConfig(metric_rank=-1), "nuts.metric_rank must be >= 0, got -1"),
        (lambda: NutsConfig(chains=4, devices=3), "nuts.devices must be 0 (as many as there are) or a count that divides "
         "nuts.chains (4), got 3"),
        (lambda: CalibrateConfig(nuts=NutsConfig(devices=2), runtime=RuntimeConfig(devices=2)),
         "nuts.devices must be 0 or 1 with runtime.devices > 1"),
        (lambda: PolicyConfig(discount=0.0), "policy.discount must be in (0, 1]"),
        (lambda: PolicyConfig(uncertainty="maybe"), "policy.uncertainty must be one of ['none', 'laplace', 'posterior']"),
        (lambda: PolicyConfig(draws=0), "policy.draws must be >= 1"),
        (lambda: PolicyConfig(holdout_draws=1), "policy.holdout_draws must be >= 2"),
        (lambda: OptimizeConfig(policy=PolicyConfig(uncertainty="laplace")), "policy.uncertainty must be none unless source=run"),
        (lambda: PolicyConfig(costs={"bribes": 1.0}), "policy.costs.bribes must be a lever name"),
        (lambda: ForecastConfig(run="/no/such/folder", years="2011-2015"), "run must be an existing calibrated run folder"),
    ],
)
def test_bad_values_are_refused_with_their_key(make, message):
    with pytest.raises(ConfigError) as error:
        make()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_origins_are_not_read_without_the_rolling_origin():
    config = CalibrateConfig(data=DataConfig(last_year=2006))  # the default origins 2005-2007 lie past 2006 - 3
    assert not config.evaluation.rolling_origin


def test_driver_terms_given_as_dicts_become_typed():
    config = DataConfig(drivers={"educating": [{"column": "share_bachelor_plus", "transform": "log"}]})
    assert config.drivers["educating"] == [DriverTerm("share_bachelor_plus", "log")]


def test_one_list_of_levers():
    assert PolicyConfig().levers == list(LEVERS)
    assert set(PolicyConfig().costs) == set(LEVERS)


def test_the_yaml_files_do_not_repeat_the_defaults_of_their_schema():
    """A group option states only what it changes: a default lives in its dataclass alone."""
    schemas = {"model": ModelConfig, "data": DataConfig, "scenario": ScenarioConfig, "policy": PolicyConfig,
               "optimizer": OptimizerConfig}
    for group, schema in schemas.items():
        default = dataclasses.asdict(schema())
        for path in sorted((conf_dir() / group).glob("*.yaml")):
            values = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(default.get(key), dict):
                    repeated = {k for k, v in value.items() if default[key].get(k) == v}
                    if key == "objective":  # an objective lists every part it weights, zero ones too
                        repeated = set()
                    assert not repeated, f"{path.name} repeats the defaults of {group}.{key}: {sorted(repeated)}"
                else:
                    assert default.get(key) != value, f"{path.name} repeats the default {group}.{key}={value!r}"


def test_a_config_survives_a_round_trip_through_a_plain_dict():
    config = CalibrateConfig(data=DataConfig(regions=["41860"], drivers={"educating": [DriverTerm("share_bachelor_plus")]}),
                             fit=FitConfig(steps=7, free=["educating_weight"]))
    assert from_dict(CalibrateConfig, dataclasses.asdict(config)) == config


def test_years():
    assert parse_years("2011-2015") == (2011, 2015) and parse_years("2012") == (2012, 2012)
    with pytest.raises(ConfigError, match="years must look like 2011-2015"):
        parse_years("next year")
