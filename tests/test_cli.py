"""The command line: every config composes, each command runs end to end and writes its files,
bad input ends in one line and exit code 2, help lists a command's own options."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from diffcomm import cli
from diffcomm.comparison import ROBUSTNESS_COLUMNS
from diffcomm.config import SCHEMAS

pytestmark = pytest.mark.usefixtures("clean_argv")

SMALL = ["data.regions=[10420,10580,10740,12060,12420,12580,14460,16980,19100,19740,26420,31100,33460,35620,37980,41860,"
         "41940,42660,47900,'00901']", "fit.steps=25", "fit.restarts=2", "fit.polish_steps=0", "evaluation.draws=20",
         "fit.progress=false"]
SMALL_OPTIMIZE = ["optimize.steps=20", "optimize.progress=false", *[f"scenario.counts.{a}=2" for a in (
    "world_city", "university_city", "immigrant_gateway", "specialized_cluster", "normal_region")]]


def group_options():
    for command, groups in cli.GROUPS.items():
        for group in groups:
            for path in sorted((cli.conf_dir() / group).glob("*.yaml")):
                yield command, f"{group}={path.stem}"


@pytest.mark.parametrize("command, override", list(group_options()))
def test_every_config_group_option_composes_into_its_schema(command, override):
    typed = cli.to_typed(cli.compose(command, [override]), command)
    assert isinstance(typed, SCHEMAS[command])


def test_the_schemas_hold_the_defaults_the_yaml_files_do_not_repeat():
    calibrate = cli.to_typed(cli.compose("calibrate"), "calibrate")
    assert calibrate.model.num_domains == 1 and calibrate.model.x64 and calibrate.fit.steps == 400
    assert calibrate.optimizer.transform["_target_"] == "diffcomm.training.adam_with_warmup"
    optimize = cli.to_typed(cli.compose("optimize"), "optimize")
    assert set(optimize.scenario.counts.values()) == {4} and optimize.model.x64
    simulate = cli.to_typed(cli.compose("simulate", ["scenario=large"]), "simulate")
    assert set(simulate.scenario.counts.values()) == {200} and not simulate.model.x64


def run(*args):
    return cli.main(list(args))


def test_simulate_writes_every_output(tmp_path):
    out = tmp_path / "run"
    assert run("simulate", "experiment=smoke", f"hydra.run.dir={out}") == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("trajectories.csv", "trajectories.npz", "summary.csv", "trajectories.png", "simulate.log"):
        assert (out / name).stat().st_size > 0, name
    assert summary["regions"] == 10 and summary["years"] == 5
    frame = pd.read_csv(out / "trajectories.csv")
    assert list(frame.columns) == ["region", "archetype", "year", "variable", "domain", "value"]
    assert set(frame.year) == set(range(1, 6)) and len(frame) == summary["rows"]
    assert {"patents", "active", "local_connectedness", "nonlocal_share"} <= set(frame.variable)
    assert frame[frame.variable == "development"].domain.isna().all() and frame[frame.variable == "active"].domain.notna().all()
    assert not frame.duplicated(["region", "year", "variable", "domain"]).any()
    arrays = np.load(out / "trajectories.npz")
    assert arrays["active"].shape == (5, 10, 3) and arrays["patents"].shape == (5, 10)
    patents = frame[(frame.variable == "patents") & (frame.year == 5)].set_index("region").value
    np.testing.assert_allclose(patents.loc[list(arrays["region"])], arrays["patents"][-1], rtol=1e-6)
    assert not list(out.glob(".*tmp")) and not (out / ".staging").exists()


def test_simulate_writes_parquet_with_the_same_rows(tmp_path):
    csv_dir, parquet_dir = tmp_path / "csv", tmp_path / "parquet"
    assert run("simulate", "experiment=smoke", f"hydra.run.dir={csv_dir}") == 0
    assert run("simulate", "experiment=smoke", "output.format=parquet", f"hydra.run.dir={parquet_dir}") == 0
    from_csv = pd.read_csv(csv_dir / "trajectories.csv")
    from_parquet = pq.read_table(parquet_dir / "trajectories.parquet").to_pandas()
    assert list(from_parquet.columns) == list(from_csv.columns) and len(from_parquet) == len(from_csv)
    np.testing.assert_allclose(from_parquet.value.to_numpy(), from_csv.value.to_numpy(), rtol=1e-6)


def test_lever_and_mne_overrides_change_the_outcome(tmp_path):
    def last(*overrides):
        out = tmp_path / "_".join(overrides).replace("=", "-")
        assert run("simulate", "experiment=smoke", "scenario.years=15", *overrides, f"hydra.run.dir={out}") == 0
        table = pd.read_csv(out / "summary.csv")
        return table.local_connectedness_last.mean(), table.active_last.mean()

    assert last("scenario.mne.spawning_share=0.9")[0] > last("scenario.mne.spawning_share=0.1")[0]
    assert last("scenario.levers.middleground=2")[1] > last("scenario.levers.middleground=0")[1]


@pytest.mark.slow
def test_a_sweep_on_the_joblib_launcher_writes_its_table_and_a_restart_skips_finished_runs(tmp_path):
    sweep = tmp_path / "sweep"
    common = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "experiment=smoke", "scenario.shock.start=2",
              f"hydra.sweep.dir={sweep}"]
    assert run("simulate", *common, "scenario.shock.intensity=0,0.5,1") == 0
    table = pd.read_csv(sweep / "sweep.csv")
    assert len(table) == 3 and (table.status == "finished").all()
    assert list(table["scenario.shock.intensity"]) == [0, 0.5, 1] and (table["scenario.shock.start"] == 2).all()
    for row in table.itertuples():  # the table holds each run's own results
        own = pd.read_csv(sweep / row.folder / "summary.csv").set_index("archetype").exports_intensity_last
        np.testing.assert_allclose(table.loc[row.Index, [f"exports_intensity_last.{a}" for a in own.index]], own, rtol=1e-9)
    exports = table.filter(like="exports_intensity_last.").mean(axis=1)
    assert exports[0] > exports[1] > exports[2]  # a harder shock leaves less exporting

    # an interrupted sweep: one run never finished; starting it again with one more value
    # redoes that run, runs the new one, and leaves the finished ones alone
    (sweep / table.folder[1] / "summary.json").unlink()
    kept = {name: (sweep / name / "summary.json").stat().st_mtime_ns for name in table.folder[[0, 2]]}
    assert run("simulate", *common, "scenario.shock.intensity=0,0.5,1,0.25") == 0
    again = pd.read_csv(sweep / "sweep.csv")
    assert len(again) == 4 and (again.status == "finished").all()
    assert {name: (sweep / name / "summary.json").stat().st_mtime_ns for name in kept} == kept
    assert (sweep / table.folder[1] / "summary.json").exists()
    assert "skipped" in (sweep / table.folder[0] / "simulate.log").read_text()
    assert list(again.folder[:3]) == list(table.folder)  # the same folders: named by their overrides, not their order


def test_a_run_that_fails_in_a_sweep_is_recorded_and_the_others_go_on(tmp_path):
    sweep = tmp_path / "sweep"  # 10 regions over 3 devices: that run fails as it starts (on any machine)
    code = run("simulate", "-m", "experiment=smoke", "runtime.devices=1,3", f"hydra.sweep.dir={sweep}")
    assert code == 1
    table = pd.read_csv(sweep / "sweep.csv")
    assert list(table.status) == ["finished", "failed"] and list(table["runtime.devices"]) == [1, 3]
    assert table.error[1].startswith("runtime.devices=3")
    assert not (sweep / table.folder[1] / "summary.json").exists()


def test_the_slurm_launcher_config_composes_on_the_submitit_plugin():
    from hydra import compose, initialize_config_dir

    cli._register_schemas()
    with initialize_config_dir(config_dir=str(cli.conf_dir()), version_base="1.3"):
        cfg = compose("calibrate", ["hydra/launcher=slurm", "hydra.launcher.partition=short"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "short" and launcher.max_num_timeout > 0 and launcher.cpus_per_task >= 1
    assert cfg.hydra.callbacks.sweep_table.command == "calibrate"


@pytest.mark.parametrize(
    "command, override, expected",
    [
        ("simulate", "scenario.nope=1", "no such key"),
        ("simulate", "scenario.counts.world_city=-3", "scenario.counts.world_city must be a non-negative count"),
        ("simulate", "scenario.shock.intensity=1.5", "scenario.shock.intensity must be a share in [0, 1]"),
        ("simulate", "scenario.mne.spawning_share=-0.2", "scenario.mne.spawning_share"),
        ("simulate", "scenario.years=abc", "scenario.years"),
        ("simulate", "model=missing", "model/missing"),
        ("simulate", "+model.params.reproduction_rate=-1", "reproduction_rate' must be finite and > 0"),
        ("simulate", "scenario.shock.intensity=0,2", "must be a share in [0, 1], got 2.0"),
        ("simulate", "ensemble.draws=3", "ensemble.draws must be 0 without run=<a calibrated run>"),
        ("simulate", "ensemble.scenarios=[{nope:1}]", "ensemble.scenarios[0].nope must be a lever from"),
        ("simulate", "ensemble.scenarios=[{},{}]", "ensemble.scenarios[1] must be a setting not given before"),
        ("simulate", "ensemble.scenarios=[{spawning:-1}]", "ensemble.scenarios[0].spawning must be >= 0 with scenario.levers"),
        ("simulate", "run=/no/such/run", "run must be an existing folder written by diffcomm calibrate"),
        ("simulate", "experiment=disruption scenario.shock.start=500", "scenario.shock.start must be a year within the 5"),
        ("simulate", "scenario.shock.intensity=1 scenario.shock.duration=0", "scenario.shock.duration must be >= 1 year"),
        ("simulate",
         "scenario.shock.intensity=1 scenario.shock.start=2 scenario.shock.archetypes=[world_city] scenario.counts.world_city=0",
         "scenario.shock.archetypes must be archetypes with regions"),
        ("simulate", "scenario.years=100000", "scenario.years must be at most 10000"),
        ("simulate", "scenario.counts.world_city=100000000", "scenario.counts must be at most 1e+08 region-years"),
        ("simulate", "experiment=nope", "experiment must be one of ['archetypes', 'disruption'"),
        ("simulate", "output.format=xlsx", "output.format must be csv or parquet"),
        ("calibrate", "fit.free=[no_such_parameter]", "fit.free must be names of model parameters"),
        ("calibrate", "fit.restarts=0", "fit.restarts must be >= 1"),
        ("calibrate", "fit.checkpoint_every=0", "fit.checkpoint_every must be >= 1"),
        ("calibrate", "fit.tolerance=-1", "fit.tolerance must be >= 0"),
        ("calibrate", "evaluation.largest_regions=0", "evaluation.largest_regions must be >= 1"),
        ("calibrate", "data.first_year=-5", "data.first_year must be a calendar year, got -5"),
        ("calibrate", "evaluation.rolling_origin=true evaluation.origins=[2009]",
         "evaluation.origins must be years from data.first_year + 2"),
        ("calibrate", "fit.region_effects=[charisma]", "fit.region_effects must be names from"),
        ("calibrate", "data.drivers.educating.0.transform=sqrt", "transform must be identity, log or log1p"),
        ("calibrate", "+data.drivers.educatng=[]", "data.drivers.educatng must be a driver from"),
        ("calibrate", "model.num_domains=3", "model.num_domains must be 1 for calibration"),
        ("optimize", "policy.budget=-5", "policy.budget must be a finite number >= 0"),
        ("optimize", "policy.levers=[bribes]", "policy.levers must be names from"),
        ("optimize", "+policy.objective.happiness=1", "policy.objective.happiness must be a part from"),
        ("optimize", "source=run", "run must be an existing calibrated run folder"),
    ],
)
def test_bad_override_ends_in_one_clear_line(tmp_path, capsys, command, override, expected):
    out = tmp_path / "run"
    smoke = ["experiment=smoke"] if command == "simulate" else []
    code = run(command, *(["-m"] if "," in override else smoke), *override.split(), f"hydra.run.dir={out}")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


def test_an_impossible_budget_cap_is_refused_after_the_regions_are_known(tmp_path, capsys):
    out = tmp_path / "run"
    assert run("optimize", "policy.region_cap=0.001", f"hydra.run.dir={out}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "region_cap 0.001 x 20 regions cannot hold the budget" in err
    assert not (out / "summary.json").exists()


def test_unknown_command(capsys):
    assert run("simulat") == 2
    assert "unknown command" in capsys.readouterr().err
    assert cli.main([]) == 2  # no command at all: the usage, on stderr
    assert "calibrate" in capsys.readouterr().err


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_each_command_has_its_own_help(capsys, command):
    assert run(command, "--help") == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: diffcomm {command}") and "examples:" in text
    for group in cli.GROUPS[command]:
        assert f"  {group}=" in text
    unused = {"model", "data", "scenario", "policy", "optimizer", "experiment"} - set(cli.GROUPS[command])
    assert not any(f"\n  {group}=" in text for group in unused)  # no groups the command does not use
    key = {"simulate": "scenario.years=50", "calibrate": "fit.steps=400", "forecast": "years=???",
           "optimize": "policy.budget=200.0"}[command]
    line = next(line for line in text.splitlines() if line.strip().startswith(key))
    assert len(line.split(maxsplit=1)) == 2  # every option says what it means


# -- data errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, expected",
    [
        ("10420,Akron OH,2000,-3", ":2: column 'patents': expected a non-negative count"),
        ("10420,Akron OH,-2001,3", ":2: column 'year': expected a calendar year"),
        ("10420,Akron OH,2000,1e12", ":2: column 'patents': 1e+12 in one region-year is above the plausible maximum"),
    ],
)
def test_bad_data_file_ends_in_one_line(tmp_path, capfd, row, expected):
    bad = tmp_path / "patents.csv"
    bad.write_text("cbsa_code,cbsa_name,year,patents\n" + row + "\n")
    out = tmp_path / "run"
    assert run("calibrate", f"data.patents={bad}", f"hydra.run.dir={out}") == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}{expected}" in err, err
    assert not (out / "summary.json").exists()


def test_a_patent_file_with_other_column_names_is_told_what_is_required(tmp_path, capfd):
    bad = tmp_path / "patents.csv"
    bad.write_text("region,year,count\n10420,2000,3\n")
    assert run("calibrate", f"data.patents={bad}", f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capfd.readouterr().err
    assert "missing column(s) 'cbsa_code', 'patents', 'cbsa_name'" in err


# -- calibrate and forecast -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A small calibration run through the command line, shared by the tests that read it."""
    from hydra.core.global_hydra import GlobalHydra

    folder = tmp_path_factory.mktemp("calibrated") / "run"
    GlobalHydra.instance().clear()
    assert cli.main(["calibrate", *SMALL, "evaluation.rolling_origin=true", "evaluation.origins=[2007]",
                     f"hydra.run.dir={folder}"]) == 0
    GlobalHydra.instance().clear()
    return folder


@pytest.mark.slow
def test_calibrate_writes_every_output_with_its_columns(calibrated):
    for name in ("params.csv", "effects.csv", "history.csv", "loss.png", "fit.png", "evaluation.csv", "evaluation.png",
                 "rolling_origin.png", "report.md", "summary.json", "fitted.eqx", "laplace.npz", "calibration.json",
                 "calibrate.log"):
        assert (calibrated / name).exists(), name
    params = pd.read_csv(calibrated / "params.csv")
    assert list(params.columns[:4]) == ["parameter", "domain", "value", "se"]
    assert {"educating_weight", "nonlocal_concentration"} <= set(params.parameter)
    summary = json.loads((calibrated / "summary.json").read_text())
    positive = params[params.parameter.isin(["buzz_scale", "patents_dispersion", "nonlocal_concentration"])]
    if summary["laplace_positive_definite"]:  # 25 steps may not reach the optimum, where the Hessian is
        assert (positive.lower95 > 0).all() and (positive.lower95 < positive.value).all()
    else:
        assert positive.lower95.isna().all() and positive.se.isna().all()  # not made up
    evaluation = pd.read_csv(calibrated / "evaluation.csv")
    assert set(evaluation.method) >= {"model", "persistence", "national drift", "log-linear trend", "NB panel regression"}
    assert set(evaluation.origin) == {2007} and len(summary["evaluation"]["table"]) == len(evaluation)
    effects = pd.read_csv(calibrated / "effects.csv", dtype={"region": str})
    # the default fits buzz quality alone: no attraction column, and its scale is no fitted parameter
    assert len(effects) == 20 and {"buzz_quality", "buzz_quality_z_sd"} <= set(effects.columns)
    assert "attraction" not in effects.columns and "attraction_scale" not in set(params.parameter)
    log = (calibrated / "calibrate.log").read_text()
    phases = ("data: 20 regions", "origin 2007: restarts: done", "origin 2007: model MALE", "Laplace approximation",
              "calibrated in")
    for phase in phases:
        assert phase in log, phase


@pytest.mark.slow
def test_an_ensemble_of_scenarios_and_parameter_draws_from_a_calibrated_run(calibrated, tmp_path):
    out = tmp_path / "ensemble"
    assert cli.main(["simulate", f"run={calibrated}", "ensemble.draws=6", "scenario.years=4",
                     "ensemble.scenarios=[{},{middleground:0},{middleground:1}]", f"hydra.run.dir={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["draws"] == 6 and summary["parameter_draws"] == "Laplace approximation"
    assert summary["scenarios"] == ["base", "middleground=0", "middleground=1"] and summary["years"] == [2011, 2014]
    table = pd.read_csv(out / "ensemble.csv")
    assert len(table) == 3 * 5 * 4 and set(table.year) == {2011, 2012, 2013, 2014}
    assert (table.q05 <= table.q50).all() and (table.q50 <= table.q95).all()
    by = {name: group.set_index(["variable", "year"]).drop(columns="scenario") for name, group in table.groupby("scenario")}
    pd.testing.assert_frame_equal(by["base"], by["middleground=0"])  # the same draws in every scenario
    patents = by["base"].loc["patents"]
    assert (patents.q05 < patents.q95).all()  # the draws differ
    regions = pd.read_csv(out / "ensemble_regions.csv", dtype={"region": str})
    assert regions.region.nunique() == 20 and set(regions.variable) == {"patents", "active"}
    active = regions[regions.variable == "active"].groupby("scenario")["mean"].sum()
    assert active["middleground=1"] > active["base"]  # a middleground activates members
    last = regions[(regions.variable == "patents") & (regions.scenario == "base")]["mean"].sum()
    np.testing.assert_allclose(last, patents["mean"].iloc[-1], rtol=1e-9)
    ratios = {row["scenario"]: row["vs_first_mean"] for row in summary["ensemble"]["last_year"]}
    assert ratios["middleground=0"] == 1.0 and ratios["middleground=1"] > 1.0
    assert (out / "ensemble.png").stat().st_size > 0 and not (out / "trajectories.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("years, expected", [("2011-2013", {2011, 2012, 2013}), ("2005-2008", {2005, 2006, 2007, 2008})])
def test_forecast_out_of_and_inside_the_data(calibrated, tmp_path, years, expected):
    out = tmp_path / "fc"
    assert cli.main(["forecast", f"run={calibrated}", f"years={years}", f"hydra.run.dir={out}"]) == 0
    frame = pd.read_csv(out / "forecast.csv", dtype={"region": str})
    assert list(frame.columns) == ["region", "year", "mean", "lower", "upper"]
    assert len(frame) == 20 * len(expected) and not frame.duplicated(["region", "year"]).any()
    assert set(frame.year) == expected and frame.region.nunique() == 20
    assert (frame.lower <= frame.upper).all() and (frame["mean"] > 0).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["origin_year"] == min(expected) - 1
    assert set(summary["level"]) == {"passthrough", "step", "dispersion"} and summary["level"]["step"] > 0
    total = pd.DataFrame(summary["total"]).set_index("year")  # the interval of the sum, one row per asked year
    assert set(total.index) == expected
    sums = frame.groupby("year")[["lower", "upper"]].sum()
    assert (total.lower <= total.upper).all()
    assert (total.lower >= sums.lower).all() and (total.upper <= sums.upper).all()  # narrower than the summed bounds
    assert (out / "forecast.png").exists()


@pytest.mark.slow
def test_forecast_refuses_what_it_cannot_do_and_writes_nothing(calibrated, tmp_path, capfd):
    for years in ("2011-2600", "1999-2003"):
        message = "years must lie in 2001-2060"
        out = tmp_path / years
        assert cli.main(["forecast", f"run={calibrated}", f"years={years}", f"hydra.run.dir={out}"]) == 2
        err = capfd.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not (out / "forecast.csv").exists() and not (out / "summary.json").exists()


def test_forecast_needs_a_finished_calibration(tmp_path, capfd):
    assert run("forecast", f"run={tmp_path}", "years=2011-2015", f"hydra.run.dir={tmp_path / 'out'}") == 2
    assert "is not a finished calibration" in capfd.readouterr().err
    assert run("forecast", f"run={tmp_path}", "years=2015-2011") == 2
    assert "comes before" in capfd.readouterr().err


@pytest.mark.slow
def test_a_calibration_in_single_precision_can_be_forecast_and_optimized(tmp_path):
    folder = tmp_path / "cal32"
    assert run("calibrate", *SMALL, "model.x64=false", "evaluation.rolling_origin=false", f"hydra.run.dir={folder}") == 0
    assert json.loads((folder / "calibration.json").read_text())["precision"] == "float32"
    # in double, over the years a forecast test above asks of the double-precision run: its programs serve
    assert run("forecast", f"run={folder}", "years=2011-2013", f"hydra.run.dir={tmp_path / 'fc'}") == 0
    assert len(pd.read_csv(tmp_path / "fc" / "forecast.csv")) == 60


@pytest.mark.slow
def test_optimize_on_a_calibrated_run(calibrated, tmp_path):
    out = tmp_path / "opt"
    assert run("optimize", "source=run", f"run={calibrated}", "policy=patents", "policy.budget=100", "optimize.steps=10",
               "optimize.progress=false", f"hydra.run.dir={out}") == 0
    allocation = pd.read_csv(out / "allocation.csv")
    assert allocation.region.nunique() == 20 and "San Francisco-Oakland-Fremont, CA" in set(allocation.region)  # the metros
    np.testing.assert_allclose(allocation.spend.sum(), 100.0, rtol=1e-9)
    comparison = pd.read_csv(out / "comparison.csv").set_index("method").objective
    assert comparison.gradient >= comparison.uniform


@pytest.mark.slow
def test_optimize_under_parameter_uncertainty(calibrated, tmp_path, capfd):
    out = tmp_path / "robust"
    common = ("optimize", "source=run", f"run={calibrated}", "policy=patents", "policy.budget=100", "optimize.steps=10",
              "optimize.progress=false", "optimize.baselines=false")
    assert run(*common, "policy.uncertainty=posterior", f"hydra.run.dir={out}") == 2  # no NUTS draws in this run
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "calibrate it with inference=nuts" in err, err
    assert not (out / "summary.json").exists() and not (out / "allocation.csv").exists()
    out = tmp_path / "robust_laplace"
    assert run(*common, "policy.uncertainty=laplace", "policy.draws=3", "policy.holdout_draws=6", f"hydra.run.dir={out}") == 0
    table = pd.read_csv(out / "robustness.csv")
    assert list(table.columns) == list(ROBUSTNESS_COLUMNS) and list(table.allocation) == ["robust", "estimate_optimal"]
    assert table[["p_beats_no_policy", "p_beats_uniform"]].isin(np.arange(7) / 6).all().all()  # shares of 6 draws
    robust = pd.read_csv(out / "allocation_robust.csv")
    np.testing.assert_allclose(robust.spend.sum(), 100.0, rtol=1e-9)
    summary = json.loads((out / "summary.json").read_text())["uncertainty"]
    assert summary["draws"] == 3 and summary["holdout_draws"] == 6 and 0 <= summary["budget_moved"] <= 1
    assert "Under parameter uncertainty" in (out / "report.md").read_text()


@pytest.mark.slow
def test_calibrate_with_nuts_writes_the_posterior_and_its_diagnostics(tmp_path):
    pytest.importorskip("blackjax")
    out = tmp_path / "nuts"
    assert run("calibrate", *SMALL, "inference=nuts", "nuts.chains=2", "nuts.warmup=10", "nuts.draws=4", "nuts.block=10",
               "nuts.rank=2", f"hydra.run.dir={out}") == 0
    for name in ("posterior.nc", "diagnostics.csv", "laplace_vs_nuts.csv", "trace.png", "rank.png", "pair.png"):
        assert (out / name).exists(), name
    table = pd.read_csv(out / "diagnostics.csv")
    assert list(table.columns) == ["parameter", "mean", "sd", "q05", "q95", "rhat", "ess_bulk", "ess_tail"]
    assert {"connecting_weight", "specializing_weight"} <= set(table.parameter)
    sampler = json.loads((out / "summary.json").read_text())["posterior"]
    assert sampler["draws"] == 4 and sampler["chains"] == 2 and len(sampler["curvature"]) > 0


@pytest.mark.slow
def test_a_truncated_estimate_is_refused_in_one_line(calibrated, tmp_path, capfd):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(calibrated, damaged)
    fitted = damaged / "fitted.eqx"
    fitted.write_bytes(fitted.read_bytes()[:100])
    assert run("forecast", f"run={damaged}", "years=2011-2012", f"hydra.run.dir={tmp_path / 'out'}") == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a finished calibration: its files cannot be read" in err


@pytest.mark.slow
def test_interrupted_calibration_resumes_in_its_folder(tmp_path, capfd):
    folder = tmp_path / "cal"
    args = [*SMALL, "evaluation.rolling_origin=false", f"hydra.run.dir={folder}"]
    assert run("calibrate", *args, "fit.stop_after=10") == 3
    assert "resume" in capfd.readouterr().err
    assert not (folder / "summary.json").exists() and not (folder / "params.csv").exists()  # nothing passed off as finished
    assert run("calibrate", *args) == 0
    resumed = pd.read_csv(folder / "params.csv")
    whole_dir = tmp_path / "whole"
    assert run("calibrate", *SMALL, "evaluation.rolling_origin=false", f"hydra.run.dir={whole_dir}") == 0
    np.testing.assert_allclose(resumed.value, pd.read_csv(whole_dir / "params.csv").value, rtol=1e-10)
    other = [*SMALL, "evaluation.rolling_origin=false", "fit.restarts=3", f"hydra.run.dir={folder}"]
    assert run("calibrate", *other) == 2  # a different configuration cannot resume this folder


@pytest.mark.slow
def test_ctrl_c_stops_within_seconds_with_a_checkpoint_and_no_traceback(tmp_path):
    folder = tmp_path / "cal"
    # a test runner started in the background may ignore SIGINT, which a child would inherit: reset it, then start
    default_sigint = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                      "os.execv(sys.executable, [sys.executable, '-m', 'diffcomm.cli', *sys.argv[1:]])")
    # one start and no latent effects: the step the signal interrupts compiles in a third of the time
    command = [sys.executable, "-c", default_sigint, "calibrate", *SMALL[:1], "fit.restarts=1", "fit.region_effects=[]",
               "fit.national_effects=false", "fit.steps=100000", "fit.patience=100000", "fit.polish_steps=0",
               "evaluation.rolling_origin=false", "runtime.compilation_cache=null", f"hydra.run.dir={folder}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 240
    while not (folder / "checkpoint.json").exists() and time.monotonic() < deadline:  # stepping has begun
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert process.returncode == 3, err
    assert "Traceback" not in err and "interrupted at step" in err
    assert json.loads((folder / "checkpoint.json").read_text())["step"] > 0
    assert not (folder / "summary.json").exists()


# -- optimize -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_optimize_command_writes_the_report(tmp_path):
    out = tmp_path / "opt"
    assert run("optimize", *SMALL_OPTIMIZE, f"hydra.run.dir={out}") == 0
    comparison = pd.read_csv(out / "comparison.csv")
    assert list(comparison.columns) == ["method", "objective", "simulator_evaluations"]
    assert set(comparison.method) == {"gradient", "uniform", "proportional_to_size", "random_search", "evolution_strategy"}
    evaluations = comparison.set_index("method").simulator_evaluations
    assert evaluations.random_search == evaluations.gradient
    allocation = pd.read_csv(out / "allocation.csv")
    assert {"region", "lever", "year", "spend", "amount"} <= set(allocation.columns)
    np.testing.assert_allclose(allocation.spend.sum(), 200.0, rtol=1e-9)
    assert (allocation.spend >= 0).all()
    marginal = pd.read_csv(out / "marginal_value.csv", index_col=0)
    assert marginal.shape == (10, 6)
    for name in ("allocation.png", "objective.png", "report.md", "objective_parts.csv", "optimize.log"):
        assert (out / name).exists(), name
    assert json.loads((out / "summary.json").read_text())["spent"] == pytest.approx(200.0)
    assert run("optimize", *SMALL_OPTIMIZE, "policy.budget=300", f"hydra.run.dir={out}") == 2  # another config's checkpoint
