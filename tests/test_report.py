"""What runs write: streamed trajectory tables, parameter tables, fit summaries, reports, figures,
and outputs that appear all together or not at all."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from diffcomm.calibrate import Laplace
from diffcomm.files import RunOutputs
from diffcomm.params import Params
from diffcomm.report import figures
from diffcomm.report.markdown import calibration_report
from diffcomm.report.sweep import finished_run, write_sweep_table
from diffcomm.report.tables import fit_summary, parameter_table, trajectory_arrays, write_trajectories
from diffcomm.scenario import synthetic_regions
from diffcomm.simulate import make_forcing, simulate


@pytest.fixture
def small_run(key):
    params = Params.from_natural(2)
    sc = synthetic_regions(params, {"world_city": 2, "normal_region": 3}, key=key, ties_per_region=2)
    _, traj = simulate(params, sc.initial, sc.drivers, sc.graph, make_forcing(4, sc.num_regions))
    return sc, traj


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_the_tidy_table_holds_every_value_once(small_run, tmp_path, form):
    sc, traj = small_run
    path = tmp_path / f"t.{form}"
    rows = write_trajectories(path, sc, traj, form=form)
    frame = pd.read_csv(path) if form == "csv" else pq.read_table(path).to_pandas()
    arrays = trajectory_arrays(traj)
    per_region_year = sum(a.shape[2] if a.ndim == 3 else 1 for a in arrays.values())
    assert rows == len(frame) == 4 * 5 * per_region_year
    assert not frame.duplicated(["region", "year", "variable", "domain"]).any()
    knowledge = frame[(frame.variable == "knowledge") & (frame.domain == 1)].pivot(index="year", columns="region", values="value")
    np.testing.assert_allclose(knowledge[list(sc.region_names)].to_numpy(), arrays["knowledge"][..., 1], rtol=1e-6)
    assert set(frame[frame.region == "normal_region_002"].archetype) == {"normal_region"}


def test_parameter_table_maps_intervals_through_each_constraint():
    approx = Laplace(names=["buzz_scale", "educating_weight", "critical_mass[0]", "critical_mass[1]"],
                     mean=np.array([np.log(np.expm1(0.08)), 1.0, 10.0, 20.0]), covariance=np.diag([4.0, 0.25, 1.0, 1.0]),
                     natural=np.array([0.08, 1.0, 10.0, 20.0]), natural_se=np.array([0.15, 0.5, 1.0, 1.0]),
                     positive_definite=True, region_effects=[], region_mean=np.zeros((3, 0)),
                     region_precision=np.zeros((3, 0, 0)), cross=np.zeros((4, 3, 0)))
    table = parameter_table(approx, domains=("Transport", "Instruments"))
    assert list(table.columns) == ["parameter", "domain", "value", "se", "lower95", "upper95", "meaning"]
    assert list(table.domain) == ["", "", "Transport", "Instruments"]  # a per-domain parameter names its domain
    buzz, weight = table.iloc[0], table.iloc[1]
    assert 0 < buzz.lower95 < 0.08 < buzz.upper95  # positive, and asymmetric as softplus makes it
    assert weight.lower95 == pytest.approx(1.0 - 1.959964 * 0.5, rel=1e-6)
    assert weight.upper95 == pytest.approx(1.0 + 1.959964 * 0.5, rel=1e-6)
    assert "buzz" in buzz.meaning


def test_fit_summary_of_a_perfect_and_of_a_constant_fit():
    observed = np.array([[3.0, 40.0, 7.0], [5.0, 35.0, np.nan]])
    perfect = fit_summary(observed, np.where(np.isnan(observed), 1.0, observed), dispersion=5.0)
    assert perfect["deviance"] == pytest.approx(0.0, abs=1e-9) and perfect["deviance_explained_vs_constant"] == pytest.approx(1.0)
    constant = fit_summary(observed, np.full_like(observed, np.nanmean(observed)), dispersion=5.0)
    assert constant["deviance_explained_vs_constant"] == pytest.approx(0.0, abs=1e-12)
    assert constant["deviance_explained_vs_region_mean"] < 0


def test_the_report_gives_the_rolling_origin_table_and_the_verdict():
    summary = dict(regions=3, years=[2000, 2010], observations=30, loss_per_observation=3.2, restart_losses=[3.2, 3.3],
                   steps=10, converged=True, polish_steps=5, laplace_positive_definite=True, level=0.8, notes=["a note"],
                   fit=dict(deviance_explained_vs_constant=0.9, deviance_explained_vs_region_mean=0.1,
                            region_abs_log_error_quantiles={0.1: 0.1, 0.5: 0.2, 0.9: 0.3}),
                   evaluation=dict(table=[
                       dict(origin=2007, method="model", male=0.4, mae=20.0, rmse=90.0, interval_50=1.2, interval_90=1.8,
                            coverage_50=0.6, coverage_90=0.93),
                       dict(origin=2007, method="level held", male=0.35, mae=12.0, rmse=60.0, interval_50=float("nan"),
                            interval_90=float("nan"), coverage_50=float("nan"), coverage_90=float("nan"))],
                       wins=[dict(origin=2007, male=False, interval_90=True, coverage_90_in_85_95=True)]))
    table = pd.DataFrame(dict(parameter=["buzz_scale"], value=[0.08], se=[0.06], lower95=[0.01], upper95=[0.3], meaning=["m"]))
    text = calibration_report(summary, table)
    assert "| 2007 | model | 0.4000 | 20.00 | 90.0 | 1.200 | 1.800 | 0.600 | 0.930 |" in text
    assert "| 2007 | level held | 0.3500 | 12.00 | 60.0 | – | – | – | – |" in text
    assert "- 2007: MALE no; 90% interval score yes; 90% coverage within 85-95%: yes" in text
    assert "| buzz_scale | 0.08 | 0.06 | [0.01, 0.3] | m |" in text and "- a note" in text
    assert "Fitted along one free path from the first year's counts." in text
    assert "Latent effects estimated with the parameters: no region effects; no national effects." in text
    both = calibration_report(dict(summary, region_effects=["attraction", "buzz_quality"], national_effects=True), table)
    assert ("Latent effects estimated with the parameters: each region's attraction and buzz quality; "
            "national year effects.") in both
    text = calibration_report(dict(summary, fitted_as="one step ahead", spin_up_years=50), table)
    assert "one step ahead, from the year before's observed counts (data.one_step_ahead), after a spin-up of 50 years" in text


def test_the_aggregate_of_years_without_data_is_missing_not_zero():
    values = np.array([[1.0, 2.0], [np.nan, np.nan], [np.nan, 4.0]])
    np.testing.assert_array_equal(figures._total(values), [3.0, np.nan, 4.0])


def test_figures_are_drawn(small_run, tmp_path):
    sc, traj = small_run
    figures.plot_archetype_trajectories(sc, traj, tmp_path / "a.png", title="t")
    years = np.arange(2001, 2011)
    rng = np.random.default_rng(0)
    observed = np.where(years[:, None] <= 2007, rng.poisson(20, (10, 5)), np.nan).astype(float)
    mean = np.full((10, 5), 20.0)
    figures.plot_observed_vs_model(years, observed, mean, mean - 5, mean + 5, tuple("abcde"), tmp_path / "b.png",
                                   origin_year=2007, extra={"persistence": mean + 1})
    figures.plot_loss_history({"loss": [[3.0, 3.1], [2.5, 2.9], [2.4, 2.8]]}, tmp_path / "c.png")
    for name in ("a.png", "b.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outputs_appear_together_or_not_at_all(tmp_path):
    with RunOutputs(tmp_path) as out:
        out.path("forecast.csv").write_text("region,year\n")
        assert not (tmp_path / "forecast.csv").exists()  # staged until the command succeeds
        out.finish({"rows": 0})
    assert (tmp_path / "forecast.csv").exists() and (tmp_path / "summary.json").exists()
    failed = tmp_path / "failed"
    with pytest.raises(RuntimeError):
        with RunOutputs(failed) as out:
            out.path("forecast.csv").write_text("region,year\n")
            raise RuntimeError("the figure could not be drawn")
    assert list(failed.iterdir()) == []  # nothing complete-looking is left behind


def _run_folder(sweep, name, overrides, summary=None, params=None, num=None):
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if num is not None:
        (folder / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
    if params is not None:
        params.to_csv(folder / "params.csv", index=False)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_the_sweep_table_has_a_row_per_run_with_its_overrides_and_results(tmp_path):
    params = lambda w: pd.DataFrame({"parameter": ["inflow_bias", "connecting_weight", "amenity_weight"],  # noqa: E731
                                     "value": [2.0, w, 0.2], "se": [0.1, 0.05, 0.04]})
    summary = lambda loss: {"loss_per_observation": loss, "fit": {"deviance_explained_vs_constant": 0.9},  # noqa: E731
                            "polish_converged": False, "seconds": 12.5, "config": {"fit": {"seed": 0}}}
    _run_folder(tmp_path, "fit.seed=2", ["fit.seed=2", "+model.params.decay=0.1"], num=10)  # started, never finished
    _run_folder(tmp_path, "fit.seed=1", ["fit.seed=1", "+model.params.decay=0.1"], summary(3.1), params(0.7), num=9)
    _run_folder(tmp_path, "fit.seed=0", ["fit.seed=0"], summary(3.0), params(0.5), num=0)
    (_run_folder(tmp_path, "fit.seed=3", ["fit.seed=3"], num=11) / "failed.txt").write_text("data.regions: no such code\n")
    _run_folder(tmp_path, "run=outputs/calibrate/x", ["run=outputs/calibrate/x"], summary(3.2), params(0.6), num=12)
    (tmp_path / ".submitit" / "1" / ".hydra").mkdir(parents=True)  # the launcher's own folders are not runs

    table = write_sweep_table(tmp_path, "calibrate")
    assert pd.read_csv(tmp_path / "sweep.csv").shape == table.shape
    assert list(table.folder) == ["fit.seed=0", "fit.seed=1", "fit.seed=2", "fit.seed=3", "run=outputs/calibrate/x"]  # by job
    assert list(table.status) == ["finished", "finished", "unfinished", "failed", "finished"]
    assert table.error[3] == "data.regions: no such code"
    assert list(table["fit.seed"][:4]) == ["0", "1", "2", "3"] and table["model.params.decay"].tolist()[1:3] == ["0.1", "0.1"]
    assert list(table.loss_per_observation[:2]) == [3.0, 3.1] and np.isnan(table.loss_per_observation[2])
    assert table.connecting_weight[4] == 0.6  # a run folder nested by a value with a slash
    assert list(table.connecting_weight[:2]) == [0.5, 0.7] and list(table.amenity_weight_se[:2]) == [0.04, 0.04]
    assert "inflow_bias" not in table  # driver weights only


def test_a_run_is_finished_only_with_its_summary_and_the_same_config(tmp_path):
    config = {"fit": {"seed": 0, "steps": 400}, "data": {"regions": None}}
    unfinished = _run_folder(tmp_path, "0", ["fit.seed=0"])
    finished = _run_folder(tmp_path, "1", ["fit.seed=0"], {"config": config})
    assert not finished_run(unfinished, config)
    assert finished_run(finished, config)
    assert not finished_run(finished, {"fit": {"seed": 0, "steps": 401}, "data": {"regions": None}})


def test_the_sweep_table_of_simulate_reads_archetypes_or_an_ensemble(tmp_path):
    archetypes = {"archetypes": [{"archetype": "world_city", "regions": 2, "patents_first": 1.0, "patents_last": 5.0}],
                  "config": {}}
    ensemble = {"ensemble": {"last_year": [{"scenario": "base", "patents_mean": 10.0, "vs_first_mean": 1.0},
                                           {"scenario": "middleground=1", "patents_mean": 12.0, "vs_first_mean": 1.2}]},
                "config": {}}
    _run_folder(tmp_path, "0_a", ["scenario.years=5"], archetypes)
    _run_folder(tmp_path, "1_b", ["scenario.years=6"], ensemble)
    table = write_sweep_table(tmp_path, "simulate").set_index("folder")
    assert table.loc["0_a", "patents_last.world_city"] == 5.0 and "patents_first.world_city" not in table
    assert table.loc["1_b", "patents_mean.middleground=1"] == 12.0 and table.loc["1_b", "vs_first_mean.base"] == 1.0
