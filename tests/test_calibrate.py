"""Calibration: recovery of known parameters, resume after interruption, seeds, compiled once, Laplace."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffcomm.calibrate import FORMAT, Calibration, calibrate, calibration_prior, fit, load_calibration, polish, save_calibration
from diffcomm.config import FitConfig
from diffcomm.effects import Estimate
from diffcomm.errors import ConfigError
from diffcomm.laplace import Laplace, estimate_mask, laplace
from diffcomm.loss import Prior, negative_log_likelihood, objective
from diffcomm.params import Params
from diffcomm.training import Interrupted

pytestmark = pytest.mark.usefixtures("x64")

TRUE_WEIGHTS = dict(connecting_weight=0.8, educating_weight=0.3, migrating_weight=0.6, specializing_weight=0.2)


def adam(steps):
    return optax.adam(optax.warmup_cosine_decay_schedule(0.0, 0.05, 20, steps, 0.001))


ADAM_40 = adam(40)  # one object: the fits below share one compiled step


def per_observation(estimate, data):
    return negative_log_likelihood(estimate, data) / data.num_observations


def settings(free, **kwargs):
    """Fit settings for the parameters `free` alone: no latent effects."""
    return FitConfig(free=free, region_effects=[], national_effects=False, progress=False, **kwargs)


def start_of(params, data):
    return Estimate.start(params, data.num_regions, data.patents.shape[0])


@pytest.mark.slow
def test_driver_weights_are_recovered_from_data_simulated_with_them(synthetic):
    truth = Params.from_natural(1, patents_dispersion=20.0, **TRUE_WEIGHTS)
    data = synthetic(jax.random.key(1), truth)
    free = list(TRUE_WEIGHTS)
    start = Params.from_natural(1, patents_dispersion=20.0)  # every weight starts at 0.5, then perturbed
    config = settings(free, restarts=4, steps=400, spread=0.5, patience=60, tolerance=1e-5)
    result = fit(per_observation, start_of(start, data), (data,), adam(400), config)
    # every start ends in the same optimum
    assert np.ptp(result.best_losses) < 1e-4, result.best_losses
    approx = laplace(result.estimate, data, Prior(start, tuple(free), None), estimate_mask(result.estimate, free, (), False))
    assert approx.positive_definite
    fitted = result.estimate.params.natural()
    for name, se in zip(approx.parameter_names, approx.natural_se):
        error = abs(float(getattr(fitted, name)) - TRUE_WEIGHTS[name])
        assert error < 0.15, (name, error)  # stated tolerance
        assert error < 3 * se, (name, error, se)  # and consistent with its standard error


@pytest.fixture
def small(synthetic):
    truth = Params.from_natural(1, **TRUE_WEIGHTS)
    data = synthetic(jax.random.key(4), truth, num_regions=40, num_years=8)
    return data, start_of(Params.from_natural(1), data), list(TRUE_WEIGHTS)


def test_resume_after_interruption_gives_the_same_parameters(small, tmp_path):
    data, start, free = small
    config = settings(free, restarts=3, steps=40, patience=1000, checkpoint_every=5)
    whole = fit(per_observation, start, (data,), ADAM_40, config)
    ckpt = tmp_path / "checkpoint"
    with pytest.raises(Interrupted) as stop:
        fit(per_observation, start, (data,), ADAM_40, dataclasses.replace(config, stop_after=17), checkpoint_path=ckpt)
    assert stop.value.step == 17
    assert json.loads(ckpt.with_suffix(".json").read_text())["step"] == 17
    resumed = fit(per_observation, start, (data,), ADAM_40, config, checkpoint_path=ckpt)
    assert resumed.steps == whole.steps == 40
    for a, b in zip(jax.tree_util.tree_leaves(whole.estimate), jax.tree_util.tree_leaves(resumed.estimate)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole.best_losses, resumed.best_losses)
    assert len(resumed.history["loss"]) == 40


def test_a_fixed_seed_gives_the_same_numbers_twice_and_another_seed_other_starts(small):
    data, start, free = small
    runs = [fit(per_observation, start, (data,), ADAM_40, settings(free, restarts=3, steps=15, seed=s)) for s in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0].history["loss"], runs[1].history["loss"])
    assert not np.array_equal(runs[0].history["loss"][0], runs[2].history["loss"][0])


def test_traced_programs_sees_a_new_program_and_not_one_compiled_before(traced_programs):
    """The instrument of the tests that count traces (below and in test_posterior.py): it counts a
    trace, and none for a program already compiled."""
    double = jax.jit(lambda x: 2.0 * x)
    with traced_programs() as first:
        double(jnp.ones(3))
    with traced_programs() as again:
        double(jnp.zeros(3))  # the same shapes
    assert len(first) >= 1 and again == []


def test_the_step_is_compiled_once_for_data_of_the_same_shape(small, traced_programs):
    """A second fit on other data of the same shape (the rolling origin) reuses the compiled step.
    (The first fit's step is the one the resume test compiled: the same loss, optimizer and shapes.)"""
    data, start, free = small
    config = settings(free, restarts=3, steps=3)
    fit(per_observation, start, (data,), ADAM_40, config)
    held_out, moved = data.through(2004), dataclasses.replace(data, patents=data.patents + 1.0)  # the same shapes
    with traced_programs() as traced:
        fit(per_observation, start, (held_out,), ADAM_40, config)
        fit(per_observation, start, (moved,), ADAM_40, config)
    assert traced == []


@pytest.mark.parametrize("restarts", [1, 3])  # one start (the polish's path, no vmap) and several
def test_a_new_fit_traces_its_step_once(small, restarts, traced_programs):
    """The fit's state keeps its types from one step to the next, so a new loss compiles the step
    once, not once for the first step and again for the rest (a weakly typed start did that: one
    more compile of up to 11 s for the restarts and for the polish on the US metros)."""
    data, start, free = small

    def loss(estimate, data):  # a new function: a program no other test has compiled
        return per_observation(estimate, data)

    with traced_programs() as traced:
        fit(loss, start, (data,), ADAM_40, settings(free, restarts=restarts, steps=3))
    assert traced.count("_fit_step") == 1


def test_calibrate_and_its_rolling_origin_refit_compile_once(fitted_small, traced_programs):
    """The refit on the same data with later years held out traces no program again, warm-started
    or not. (The first calibration compiles its programs unless the shared one already has.)"""
    data, config, _ = fitted_small
    first_fit = calibrate(data, config)
    held_out = data.through(2004)
    with traced_programs() as traced:
        calibrate(held_out, config)
        calibrate(held_out, config, start=first_fit.estimate)
    assert traced == []  # restarts, polish and Laplace approximation reused


def test_calibrate_refuses_a_precision_it_was_not_given(fitted_small):
    data, config, _ = fitted_small
    with jax.enable_x64(False):
        with pytest.raises(ConfigError, match="model.x64 is true but JAX runs in single precision"):
            calibrate(data, config)


def laplace_of(names, natural, sd):
    """A Laplace approximation with independent unconstrained sds `sd` around `natural` values."""
    params = Params.from_natural(1, **dict(zip(names, natural)))
    mean = np.array([float(params.unconstrained[n]) for n in names])
    return Laplace(list(names), mean, np.diag(np.square(sd)), np.asarray(natural), np.full(len(names), np.nan), True, [],
                   np.zeros((0, 0)), np.zeros((0, 0, 0)), np.zeros((len(names), 0, 0)))


def test_intervals_come_from_the_unconstrained_scale_and_respect_each_range():
    approx = laplace_of(["educating_weight", "overlap_decay", "buzz_scale"], [0.7, 0.2, 0.08], [0.1, 0.5, 2.0])
    lower, upper = approx.interval(0.95)
    z = 1.959963984540054
    np.testing.assert_allclose([lower[0], upper[0]], 0.7 + np.array([-z, z]) * 0.1, rtol=1e-9)
    np.testing.assert_allclose([lower[1], upper[1]], jax.nn.sigmoid(jnp.log(0.2 / 0.8) + np.array([-z, z]) * 0.5), rtol=1e-9)
    assert 0 < lower[1] < 0.2 < upper[1] < 1  # a share stays a share
    assert 0 < lower[2] < 0.08 < upper[2]  # a positive parameter stays positive, however uncertain


def test_calibrate_recipe_and_its_files(fitted_small, tmp_path):
    data, config, calibration = fitted_small
    assert calibration.laplace.parameter_names == ["inflow_bias", "educating_weight", "attraction_scale",
                                                   "national_shock_scale"]  # declaration order
    save_calibration(calibration, tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    loaded = load_calibration(tmp_path)
    assert isinstance(loaded, Calibration) and loaded.config == config
    for a, b in zip(jax.tree_util.tree_leaves(loaded.estimate), jax.tree_util.tree_leaves(calibration.estimate)):
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


def test_the_polish_lowers_the_objective_and_never_raises_it(fitted_small):
    """The polish returns the objective's value at its estimate, never above its start's; from
    a start away from the restarts' best, the rounds it keeps lower the objective. (Its rounds
    minimise the objective with the curvature's information frozen, which need not lower the
    objective itself: on this fixture's restarts' best, no part of the first round's move does.)"""
    data, config, calibration = fitted_small
    prior = calibration_prior(config)

    def value(estimate):
        return float(objective(estimate, data, prior))

    assert value(calibration.estimate) <= value(calibration.restarts.estimate)
    np.testing.assert_allclose(calibration.polished.best_losses[0], value(calibration.estimate), rtol=1e-12)
    best = calibration.restarts.estimate
    start = eqx.tree_at(lambda e: e.params.unconstrained["educating_weight"], best,
                        best.params.unconstrained["educating_weight"] + 0.5)
    result = polish(start, data, prior, config.fit)
    assert result.best_losses[0] < value(start) - 1e-3
    np.testing.assert_allclose(result.best_losses[0], value(result.estimate), rtol=1e-12)


def test_a_calibration_of_an_earlier_format_is_refused_in_one_line(tmp_path):
    for name in ("summary.json", "fitted.eqx", "laplace.npz"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "calibration.json").write_text(f'{{"format": {FORMAT - 1}, "precision": "float64", "config": {{}}}}')
    with pytest.raises(ConfigError, match=rf"calibration format {FORMAT - 1}, this one reads {FORMAT}\): calibrate again"):
        load_calibration(tmp_path)
    for damaged in ('{"format": ', "[3]"):  # cut short, or not an object: one line, not a traceback
        (tmp_path / "calibration.json").write_text(damaged)
        with pytest.raises(ConfigError, match="is not a finished calibration: its files cannot be read"):
            load_calibration(tmp_path)
