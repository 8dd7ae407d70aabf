"""Calibration: recovery of known parameters, resume after interruption, seeds, Laplace."""

import json
import sys

import jax
import numpy as np
import optax
import pandas as pd
import pytest
from calibration_helpers import synthetic_inputs

from diffcomm import cli
from diffcomm.calibrate import FitSettings, Interrupted, fit, laplace
from diffcomm.loss import calibration_loss
from diffcomm.model import Params

TRUE_WEIGHTS = dict(connecting_weight=0.8, educating_weight=0.3, migrating_weight=0.6, specializing_weight=0.2)


def adam(steps):
    return optax.adam(optax.warmup_cosine_decay_schedule(0.0, 0.05, 20, steps, 0.001))


def test_driver_weights_are_recovered_from_data_simulated_with_them():
    truth = Params.from_natural(1, patents_dispersion=20.0, **TRUE_WEIGHTS)
    inputs = synthetic_inputs(jax.random.key(1), truth)
    n = float(inputs.num_observations)
    free = list(TRUE_WEIGHTS)
    start = Params.from_natural(1, patents_dispersion=20.0)  # every weight starts at 0.5, then perturbed
    result = fit(lambda p: calibration_loss(p, inputs) / n, start, adam(400),
                 FitSettings(free=free, restarts=4, steps=400, spread=0.5, patience=60), progress=False)
    # every start ends in the same optimum
    assert np.ptp(result.best_losses) < 1e-4, result.best_losses
    approx = laplace(lambda p: calibration_loss(p, inputs), result.params, free)
    assert approx.positive_definite
    fitted = result.params.natural()
    for name, se in zip(approx.names, approx.natural_se):
        error = abs(float(getattr(fitted, name)) - TRUE_WEIGHTS[name])
        assert error < 0.15, (name, error)  # stated tolerance
        assert error < 3 * se, (name, error, se)  # and consistent with its standard error


def _small_problem():
    truth = Params.from_natural(1, **TRUE_WEIGHTS)
    inputs = synthetic_inputs(jax.random.key(4), truth, num_regions=40, num_years=8)
    n = float(inputs.num_observations)
    return (lambda p: calibration_loss(p, inputs) / n), Params.from_natural(1), list(TRUE_WEIGHTS)


def test_resume_after_interruption_gives_the_same_parameters(tmp_path):
    loss, start, free = _small_problem()
    settings = FitSettings(free=free, restarts=3, steps=40, patience=1000, checkpoint_every=5)
    whole = fit(loss, start, adam(40), settings, progress=False)
    ckpt = tmp_path / "checkpoint"
    with pytest.raises(Interrupted) as stop:
        fit(loss, start, adam(40), FitSettings(**{**settings.__dict__, "stop_after": 17}), checkpoint_path=ckpt, progress=False)
    assert stop.value.step == 17
    assert json.loads(ckpt.with_suffix(".json").read_text())["step"] == 17
    resumed = fit(loss, start, adam(40), settings, checkpoint_path=ckpt, progress=False)
    assert resumed.steps == whole.steps == 40
    for a, b in zip(jax.tree_util.tree_leaves(whole.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole.best_losses, resumed.best_losses)
    assert len(resumed.history["loss"]) == 40


def test_a_fixed_seed_gives_the_same_numbers_twice_and_another_seed_other_starts():
    loss, start, free = _small_problem()
    runs = [fit(loss, start, adam(40), FitSettings(free=free, restarts=3, steps=15, seed=s), progress=False) for s in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0].history["loss"], runs[1].history["loss"])
    assert not np.array_equal(runs[0].history["loss"][0], runs[2].history["loss"][0])


def test_laplace_recovers_the_covariance_of_a_quadratic():
    centre = {"educating_weight": 0.7, "overlap_decay": 0.2}
    scales = {"educating_weight": 0.1, "overlap_decay": 0.5}
    target = Params.from_natural(1, **centre)

    def loss(p):
        return sum(0.5 * ((getattr(p, k) - getattr(target, k)) / scales[k]) ** 2 for k in centre)

    approx = laplace(loss, target, list(centre))
    assert approx.positive_definite
    np.testing.assert_allclose(np.sqrt(np.diag(approx.covariance)), [scales[n] for n in approx.names], rtol=1e-6)
    # delta method: d sigmoid / d raw = x (1 - x) at x = 0.2
    se = dict(zip(approx.names, approx.natural_se))
    np.testing.assert_allclose(se["overlap_decay"], 0.5 * 0.2 * 0.8, rtol=1e-6)
    np.testing.assert_allclose(se["educating_weight"], 0.1, rtol=1e-6)



SMALL = ["data.regions=[10420,10580,10740,12060,12420,12580,14460,16980,19100,19740,26420,31100,33460,35620,37980,41860,41940,42660,47900,'00901']",
         "fit.steps=25", "fit.restarts=2", "fit.polish_steps=0", "evaluation.draws=20", "fit.progress=false"]


@pytest.mark.slow
def test_calibrate_then_forecast_from_the_command_line(tmp_path, clean_argv):
    run = tmp_path / "cal"
    assert cli.main(["calibrate", *SMALL, f"hydra.run.dir={run}"]) == 0
    for name in ("params.csv", "history.csv", "loss.png", "fit.png", "rolling_origin.csv", "rolling_origin.png",
                 "report.md", "summary.json", "fitted.eqx", "laplace.npz"):
        assert (run / name).exists(), name
    params = pd.read_csv(run / "params.csv")
    assert {"educating_weight", "nonlocal_concentration"} <= set(params.parameter)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["rolling_origin"]["scores"]) == {"model", "persistence", "log_linear_trend"}

    out = tmp_path / "fc"
    assert cli.main(["forecast", f"run={run}", "years=2011-2013", f"hydra.run.dir={out}"]) == 0
    frame = pd.read_csv(out / "forecast.csv", dtype={"region": str})
    assert list(frame.columns) == ["region", "year", "mean", "lower", "upper"]
    assert len(frame) == 20 * 3 and not frame.duplicated(["region", "year"]).any()
    assert set(frame.year) == {2011, 2012, 2013} and frame.region.nunique() == 20
    assert (frame.lower <= frame.upper).all() and (frame["mean"] > 0).all()


@pytest.mark.slow
def test_interrupted_calibration_resumes_in_its_folder(tmp_path, clean_argv, capfd):
    run = tmp_path / "cal"
    args = [*SMALL, "evaluation.rolling_origin=false", f"hydra.run.dir={run}"]
    assert cli.main(["calibrate", *args, "fit.stop_after=10"]) == 3
    assert "resume" in capfd.readouterr().err
    assert not (run / "summary.json").exists()  # nothing passed off as finished
    assert cli.main(["calibrate", *args]) == 0
    resumed = pd.read_csv(run / "params.csv")
    whole_dir = tmp_path / "whole"
    assert cli.main(["calibrate", *SMALL, "evaluation.rolling_origin=false", f"hydra.run.dir={whole_dir}"]) == 0
    whole = pd.read_csv(whole_dir / "params.csv")
    np.testing.assert_allclose(resumed.value, whole.value, rtol=1e-10)
    other = [*SMALL, "evaluation.rolling_origin=false", "fit.restarts=3", f"hydra.run.dir={run}"]
    assert cli.main(["calibrate", *other]) == 2  # a different configuration cannot resume this folder


@pytest.mark.parametrize(
    "override, expected",
    [
        ("fit.free=[no_such_parameter]", "fit.free must be names of model parameters"),
        ("fit.restarts=0", "fit.restarts must be >= 1"),
        ("evaluation.train_last_year=2012", "evaluation.train_last_year must be strictly between"),
        ("data.drivers.educating.0.transform=sqrt", "transform must be identity, log or log1p"),
    ],
)
def test_bad_calibrate_overrides(clean_argv, capsys, override, expected):
    assert cli.main(["calibrate", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_forecast_needs_a_calibrated_run(tmp_path, clean_argv, capfd):
    assert cli.main(["forecast", f"run={tmp_path}", "years=2011-2015", f"hydra.run.dir={tmp_path / 'out'}"]) == 2
    assert "is not a finished calibration" in capfd.readouterr().err
    assert cli.main(["forecast", f"run={tmp_path}", "years=2015-2011"]) == 2
    assert "comes before" in capfd.readouterr().err


def test_bad_data_file_ends_in_one_line(tmp_path, clean_argv, capfd):
    bad = tmp_path / "patents.csv"
    bad.write_text("cbsa_code,cbsa_name,year,patents\n10420,A,2000,-3\n")
    out = tmp_path / "run"
    assert cli.main(["calibrate", f"data.patents={bad}", f"hydra.run.dir={out}"]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:2: column 'patents': expected a non-negative count" in err
    assert not (out / "summary.json").exists()
