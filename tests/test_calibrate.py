"""Calibration: recovery of known parameters, resume after interruption, seeds, compiled once, Laplace."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffcomm.calibrate import Calibration, calibrate, fit, laplace, load_calibration, save_calibration
from diffcomm.config import FitConfig
from diffcomm.errors import ConfigError
from diffcomm.loss import Prior, negative_log_likelihood, objective
from diffcomm.params import Params
from diffcomm.training import Interrupted

pytestmark = pytest.mark.usefixtures("x64")

TRUE_WEIGHTS = dict(connecting_weight=0.8, educating_weight=0.3, migrating_weight=0.6, specializing_weight=0.2)


def adam(steps):
    return optax.adam(optax.warmup_cosine_decay_schedule(0.0, 0.05, 20, steps, 0.001))


ADAM_40 = adam(40)  # one object: the fits below share one compiled step


def per_observation(params, data):
    return negative_log_likelihood(params, data) / data.num_observations


@pytest.mark.slow
def test_driver_weights_are_recovered_from_data_simulated_with_them(synthetic):
    truth = Params.from_natural(1, patents_dispersion=20.0, **TRUE_WEIGHTS)
    data = synthetic(jax.random.key(1), truth)
    free = list(TRUE_WEIGHTS)
    start = Params.from_natural(1, patents_dispersion=20.0)  # every weight starts at 0.5, then perturbed
    result = fit(per_observation, start, (data,), adam(400),
                 FitConfig(free=free, restarts=4, steps=400, spread=0.5, patience=60, tolerance=1e-5, progress=False))
    # every start ends in the same optimum
    assert np.ptp(result.best_losses) < 1e-4, result.best_losses
    approx = laplace(negative_log_likelihood, result.params, (data,), free)
    assert approx.positive_definite
    fitted = result.params.natural()
    for name, se in zip(approx.names, approx.natural_se):
        error = abs(float(getattr(fitted, name)) - TRUE_WEIGHTS[name])
        assert error < 0.15, (name, error)  # stated tolerance
        assert error < 3 * se, (name, error, se)  # and consistent with its standard error


@pytest.fixture
def small(synthetic):
    truth = Params.from_natural(1, **TRUE_WEIGHTS)
    return synthetic(jax.random.key(4), truth, num_regions=40, num_years=8), Params.from_natural(1), list(TRUE_WEIGHTS)


def test_resume_after_interruption_gives_the_same_parameters(small, tmp_path):
    data, start, free = small
    settings = FitConfig(free=free, restarts=3, steps=40, patience=1000, checkpoint_every=5, progress=False)
    whole = fit(per_observation, start, (data,), ADAM_40, settings)
    ckpt = tmp_path / "checkpoint"
    with pytest.raises(Interrupted) as stop:
        fit(per_observation, start, (data,), ADAM_40, dataclasses.replace(settings, stop_after=17), checkpoint_path=ckpt)
    assert stop.value.step == 17
    assert json.loads(ckpt.with_suffix(".json").read_text())["step"] == 17
    resumed = fit(per_observation, start, (data,), ADAM_40, settings, checkpoint_path=ckpt)
    assert resumed.steps == whole.steps == 40
    for a, b in zip(jax.tree_util.tree_leaves(whole.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole.best_losses, resumed.best_losses)
    assert len(resumed.history["loss"]) == 40


def test_a_fixed_seed_gives_the_same_numbers_twice_and_another_seed_other_starts(small):
    data, start, free = small
    runs = [fit(per_observation, start, (data,), ADAM_40, FitConfig(free=free, restarts=3, steps=15, seed=s, progress=False))
            for s in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0].history["loss"], runs[1].history["loss"])
    assert not np.array_equal(runs[0].history["loss"][0], runs[2].history["loss"][0])


def test_the_step_is_compiled_once_for_data_of_the_same_shape(small):
    """A second fit on other data of the same shape (the rolling origin) reuses the compiled step."""
    data, start, free = small
    traces = []

    def counted(params, data, prior):
        traces.append(1)  # runs only while the step is traced
        return objective(params, data, prior)

    prior = Prior(start, tuple(free), 1.0)
    settings = FitConfig(free=free, restarts=2, steps=3, progress=False)
    optimizer = optax.adam(0.01)
    fit(counted, start, (data, prior), optimizer, settings)
    after_first = len(traces)
    fit(counted, start, (data.through(2004), prior), optimizer, settings)  # later years held out, same shapes
    fit(counted, start, (dataclasses.replace(data, patents=data.patents + 1.0), prior), optimizer, settings)
    assert after_first >= 1 and len(traces) == after_first


def test_calibrate_and_its_rolling_origin_refit_compile_once(fitted_small, monkeypatch):
    """The refit on the same data with later years held out traces no program again."""
    import importlib

    data, config, _ = fitted_small
    module = importlib.import_module("diffcomm.calibrate")  # the module (diffcomm.calibrate is the function)
    traces = []

    def counted(function):
        def traced(*args):
            traces.append(function.__name__)  # runs only while a program is traced
            return function(*args)
        return traced

    monkeypatch.setattr(module, "objective", counted(module.objective))  # new functions: fresh compiled programs
    monkeypatch.setattr(module, "negative_log_posterior", counted(module.negative_log_posterior))
    calibrate(data, config)
    first = len(traces)
    calibrate(data.through(2004), config)
    assert first >= 3 and len(traces) == first  # restarts, polish and Hessian all reused


def test_calibrate_refuses_a_precision_it_was_not_given(fitted_small):
    data, config, _ = fitted_small
    with jax.enable_x64(False):
        with pytest.raises(ConfigError, match="model.x64 is true but JAX runs in single precision"):
            calibrate(data, config)


def test_laplace_recovers_the_covariance_of_a_quadratic():
    centre = {"educating_weight": 0.7, "overlap_decay": 0.2}
    scales = {"educating_weight": 0.1, "overlap_decay": 0.5}
    target = Params.from_natural(1, **centre)

    def loss(p, target):
        return sum(0.5 * ((p.unconstrained[k] - target.unconstrained[k]) / scales[k]) ** 2 for k in centre)

    approx = laplace(loss, target, (target,), list(centre))
    assert approx.positive_definite
    np.testing.assert_allclose(np.sqrt(np.diag(approx.covariance)), [scales[n] for n in approx.names], rtol=1e-6)
    # delta method: d sigmoid / d unconstrained = x (1 - x) at x = 0.2
    se = dict(zip(approx.names, approx.natural_se))
    np.testing.assert_allclose(se["overlap_decay"], 0.5 * 0.2 * 0.8, rtol=1e-6)
    np.testing.assert_allclose(se["educating_weight"], 0.1, rtol=1e-6)
    # intervals come from the unconstrained scale: a share's interval stays inside (0, 1)
    lower, upper = approx.interval(0.95)
    bounds = dict(zip(approx.names, zip(lower, upper)))
    z = 1.959963984540054
    np.testing.assert_allclose(bounds["overlap_decay"], jax.nn.sigmoid(jnp.log(0.2 / 0.8) + np.array([-z, z]) * 0.5), rtol=1e-9)
    np.testing.assert_allclose(bounds["educating_weight"], 0.7 + np.array([-z, z]) * 0.1, rtol=1e-9)
    assert 0 < bounds["overlap_decay"][0] < bounds["overlap_decay"][1] < 1


def test_a_positive_parameter_keeps_a_positive_interval_however_uncertain():
    target = Params.from_natural(1, buzz_scale=0.08)

    def loss(p, target):  # sd 2 on the unconstrained scale: the delta method would cross zero
        return 0.5 * ((p.unconstrained["buzz_scale"] - target.unconstrained["buzz_scale"]) / 2.0) ** 2

    approx = laplace(loss, target, (target,), ["buzz_scale"])
    lower, upper = approx.interval(0.95)
    assert approx.natural[0] - 1.96 * approx.natural_se[0] < 0 < lower[0] < approx.natural[0] < upper[0]


def test_calibrate_recipe_and_its_files(fitted_small, tmp_path):
    data, config, calibration = fitted_small
    assert calibration.polished is None or calibration.polished.best_loss <= calibration.restarts.best_loss
    assert calibration.laplace.names == ["inflow_bias", "educating_weight"]  # declaration order
    save_calibration(calibration, tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    loaded = load_calibration(tmp_path)
    assert isinstance(loaded, Calibration) and loaded.config == config
    for a, b in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(calibration.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.laplace.covariance, calibration.laplace.covariance)


def test_a_damaged_run_folder_is_refused_in_one_line(fitted_small, tmp_path):
    save_calibration(fitted_small[2], tmp_path)
    with pytest.raises(ConfigError, match="is not a finished calibration: missing summary.json"):
        load_calibration(tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    fitted = tmp_path / "fitted.eqx"
    fitted.write_bytes(fitted.read_bytes()[:40])  # truncated
    with pytest.raises(ConfigError, match="its files cannot be read") as error:
        load_calibration(tmp_path)
    assert "\n" not in str(error.value)


def test_the_fit_reaches_the_same_optimum_from_perturbed_data_to_the_precision_of_the_loss(fitted_small):
    """Two fits whose data differ by rounding end within 1e-5 of each other once polished: the
    polish runs until the loss stops improving at all, not at a loose relative tolerance."""
    data, config, calibration = fitted_small
    nudged = dataclasses.replace(data, first_patents=data.first_patents * (1 + 1e-15))
    assert not np.array_equal(nudged.first_patents, data.first_patents)  # the last bit moved
    np.testing.assert_allclose(calibrate(nudged, config).laplace.natural, calibration.laplace.natural, rtol=1e-5)
