"""The NUTS posterior: its coordinates (the national effects centred, the Laplace whitening and its
curvature correction), and a short run on the small shared calibration read back through ArviZ."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

pytest.importorskip("blackjax")
pytest.importorskip("arviz")

from diffcomm.calibrate import calibration_prior  # noqa: E402
from diffcomm.config import NutsConfig  # noqa: E402
from diffcomm.effects import national_effects, national_innovations  # noqa: E402
from diffcomm.laplace import _layout  # noqa: E402
from diffcomm.loss import log_joint  # noqa: E402
from diffcomm.posterior import (  # noqa: E402
    RESTART_CENTRE,
    adaptation_windows,
    initial_chains,
    sample_posterior,
    step_adaptation,
    step_for_acceptance,
)
from diffcomm.report.posterior import COLUMNS, diagnostics_table, inference_data, laplace_against_nuts  # noqa: E402
from diffcomm.training import load_checkpoint  # noqa: E402
from diffcomm.whitening import coordinates, whitening, window_metric  # noqa: E402

pytestmark = pytest.mark.usefixtures("x64")


def _top_curvature(density, size, dtype, iterations=40):
    """The largest eigenvalue of -Hessian(density) at 0 (power iteration)."""
    hvp = jax.jit(lambda v: -jax.jvp(jax.grad(density), (jnp.zeros(size, dtype),), (v,))[1])
    v = jnp.ones(size, dtype) / np.sqrt(size)
    for _ in range(iterations):
        w = hvp(v)
        value, v = float(v @ w), w / jnp.linalg.norm(w)
    return value


def test_the_whitening_reproduces_the_laplace_covariance_and_flattens_the_stiff_directions(fitted_small):
    data, _, calibration = fitted_small
    coords = coordinates(calibration)
    assert coords.year_index.size == len(data.years) - 1  # the national effects are what is sampled
    whiten, values = whitening(calibration, data, coords, rank=8)
    approx = calibration.laplace
    size = whiten.centre.shape[0]
    zero = jnp.zeros(size, whiten.centre.dtype)
    # x as a function of w: at w = 0 the Laplace mean, and to first order the Laplace covariance
    # (wrong if the whitening were not carried through the Jacobian of the centring)
    jacobian = np.asarray(jax.jacfwd(lambda w: coords.entries(whiten.laplace_map(w)))(zero))
    covariance = jacobian @ jacobian.T
    gi = np.asarray(whiten.global_index)
    np.testing.assert_allclose(covariance[np.ix_(gi, gi)], approx.covariance, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(np.asarray(coords.entries(whiten.laplace_map(zero)))[gi], approx.mean, rtol=1e-9, atol=1e-12)

    prior = calibration_prior(calibration.config)
    plain = eqx.tree_at(lambda m: (m.directions, m.correction), whiten, (whiten.directions[:, :0], whiten.correction[:0]))
    before = _top_curvature(coords.density(plain, data, prior), size, whiten.centre.dtype)
    after = _top_curvature(coords.density(whiten, data, prior), size, whiten.centre.dtype)
    assert before == pytest.approx(values[0], rel=0.05)  # the subspace iteration found the top of the spectrum
    assert before > 1.2  # the Gauss-Newton Laplace misses some curvature even here (1.56)
    assert after < before and after == pytest.approx(1.0, abs=0.1)  # corrected: brought to about 1


def test_the_centred_national_effects_map_back_to_the_innovations_with_their_jacobian(fitted_small):
    data, _, calibration = fitted_small
    coords = coordinates(calibration)
    p = calibration.estimate.params.natural()
    eps = jnp.asarray(np.random.default_rng(1).normal(size=7))
    np.testing.assert_allclose(np.asarray(national_innovations(p, national_effects(p, eps))), np.asarray(eps), rtol=1e-10)

    free, fixed = eqx.partition(calibration.estimate, calibration.mask)
    flat, unravel = ravel_pytree(free)
    x = flat + 0.1 * jnp.asarray(np.random.default_rng(2).normal(size=flat.size))
    y = coords.centred(x)
    years = np.asarray(coords.year_index)
    assert not np.allclose(np.asarray(y)[years], np.asarray(x)[years])  # the year entries change ...
    np.testing.assert_array_equal(np.delete(np.asarray(y), years), np.delete(np.asarray(x), years))  # ... only they
    np.testing.assert_allclose(np.asarray(coords.entries(y)), np.asarray(x), rtol=1e-10, atol=1e-12)
    _, log_det = np.linalg.slogdet(np.asarray(jax.jacfwd(coords.entries)(y)))
    assert float(coords.log_jacobian(y)) == pytest.approx(log_det, rel=1e-9)
    identity = coordinates(calibration, centre_national=False)
    assert identity.year_index.size == 0 and np.array_equal(np.asarray(identity.entries(y)), np.asarray(y))
    assert float(identity.log_jacobian(y)) == 0.0
    prior = calibration_prior(calibration.config)
    whiten, _ = whitening(calibration, data, identity, rank=0)
    w = jnp.zeros(flat.size, flat.dtype)  # without centring the density of w is log_joint at the whitened entries
    assert float(identity.density(whiten, data, prior)(w)) == pytest.approx(
        float(log_joint(eqx.combine(unravel(whiten(w)), fixed), data, prior)), rel=1e-12)


def test_the_metric_windows_follow_stans_schedule_in_whole_blocks():
    windows = adaptation_windows(500, 25)
    assert windows == [(25, 50), (50, 100), (100, 200), (200, 450)]  # then 50 transitions for the step size
    for warmup, block in [(150, 25), (300, 25), (1000, 50), (130, 10)]:
        windows = adaptation_windows(warmup, block)
        assert windows and all(start % block == 0 and end % block == 0 for start, end in windows)
        assert all(a[1] == b[0] for a, b in zip(windows[:-1], windows[1:]))  # contiguous
        assert windows[0][0] >= block and windows[-1][1] <= 0.95 * warmup  # step size alone first and last
    assert adaptation_windows(100, 25) == []  # four blocks: too few to learn a metric


def test_the_draws_step_meets_the_target_acceptance_where_dual_averagings_average_does_not():
    """Transitions at steps spread as dual averaging's iterates are, with acceptances noisy around
    a logistic curve in the log step: the fitted step is where the curve gives the target; the
    geometric mean of steps whose mean acceptance is the target lies below it (the curve is
    concave there), which is the overshoot of acceptance the fit removes."""
    rng = np.random.default_rng(0)
    intercept, slope, target = -6.0, -3.5, 0.8  # acceptance 1 / (1 + exp(-(intercept + slope log step)))
    truth = np.exp((np.log(target / (1 - target)) - intercept) / slope)  # 0.121
    step = truth * np.exp(rng.uniform(-0.9, 0.6, size=(4, 200)))
    mean = 1 / (1 + np.exp(-(intercept + slope * np.log(step))))
    acceptance = rng.beta(4 * mean, 4 * (1 - mean))
    fitted = step_for_acceptance(step, acceptance, target)
    assert fitted == pytest.approx(truth, rel=0.08)
    # a window whose mean acceptance is the target, averaged as dual averaging does, ends below it
    average = np.exp(np.log(step).mean())
    assert np.mean(mean) == pytest.approx(target, abs=0.05) and average < 0.95 * truth
    assert step_for_acceptance(step, 1 - acceptance, target) is None  # acceptance rising with the step: no curve
    assert step_for_acceptance(np.full(10, 0.1), acceptance[0, :10], target) is None  # no spread of steps
    small = step[step < 0.6 * truth]  # acceptance 0.9 and more: the target's step lies beyond them
    assert step_for_acceptance(small, acceptance[step < 0.6 * truth], target) == pytest.approx(small.max())  # not extrapolated


def test_after_a_metric_change_the_step_search_starts_at_the_last_step_not_ten_times_it():
    restart, update, _ = step_adaptation(NutsConfig(), jnp.float64)
    steps = [0.05, 0.1]

    def second(centre):  # the step of the second transition after a restart, the first at the target acceptance
        return np.array([np.exp(float(update(restart(jnp.asarray(step), centre), 0.8).log_step_size)) / step for step in steps])

    np.testing.assert_allclose(second(RESTART_CENTRE), 1.0, rtol=1e-12)
    assert np.all(second(10.0) > 9)  # Stan's restart: ten times the step, which diverged on the metros


def test_a_window_metric_whitens_its_draws_dense_in_the_globals_and_per_coordinate_elsewhere():
    rng = np.random.default_rng(3)
    num_global, dim = 3, 7
    mixing = np.array([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [-0.3, 0.2, 0.1]])
    scales = np.array([0.2, 1.0, 3.0, 0.3])
    u = rng.normal(size=(4, 5000, dim))
    draws = np.concatenate([u[..., :num_global] @ mixing.T, scales * u[..., num_global:]], -1) + 7.0
    metric = window_metric(draws, num_global)
    v = np.asarray(metric.inverse(jnp.asarray(draws))).reshape(-1, dim)
    np.testing.assert_allclose(np.cov(v.T), np.eye(dim), atol=0.05)  # correlated and unequal scales undone
    np.testing.assert_allclose(np.asarray(metric(metric.inverse(jnp.asarray(draws)))), draws, rtol=1e-9)
    few = draws[:, :2].reshape(-1, dim)  # 8 draws: each sd shrunk from the sample's towards 1
    metric = window_metric(draws[:, :2], num_global)
    sd = np.concatenate([np.sqrt(np.sum(np.asarray(metric.factor) ** 2, 1)), np.asarray(metric.scale)])
    sample = few.std(0, ddof=1)
    assert np.all((sd - 1) * (sample - 1) > 0) and np.all(np.abs(sd - 1) < np.abs(sample - 1))


def test_a_window_metric_stretches_the_one_direction_its_draws_spread_along_beyond_chance():
    rng = np.random.default_rng(4)
    num_global, dim, chains, n = 3, 60, 4, 200
    scales = rng.uniform(0.5, 2.0, dim)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    plain = scales * rng.normal(size=(chains, n, dim))
    spread = plain + 10.0 * rng.normal(size=(chains, n, 1)) * direction  # sd 10 along one direction over all coordinates

    def largest_variance(metric, draws):
        v = np.asarray(metric.inverse(jnp.asarray(draws))).reshape(-1, dim)
        return np.linalg.eigvalsh(np.cov(v.T))[-1]

    block = window_metric(spread, num_global)  # dense globals and a scale per coordinate only
    metric = window_metric(spread, num_global, rank=4)
    assert np.count_nonzero(np.asarray(metric.stretch)) == 1 and metric.directions.shape == (dim, 4)
    assert largest_variance(block, spread) > 20 and largest_variance(metric, spread) < 2.0
    np.testing.assert_allclose(np.asarray(metric(metric.inverse(jnp.asarray(spread)))), spread, rtol=1e-9, atol=1e-9)
    assert not np.any(np.asarray(window_metric(plain, num_global, rank=4).stretch))  # chance spread: nothing stretched


@pytest.mark.slow
def test_a_short_nuts_run_agrees_with_the_laplace_approximation_and_resumes(fitted_small, tmp_path, traced_programs):
    data, _, calibration = fitted_small
    # metric windows at 25-50 and 50-125; trees of at most 7 leapfrog steps before the first metric
    config = NutsConfig(chains=2, warmup=150, draws=100, block=25, rank=8, early_doublings=3)
    with traced_programs() as traced:
        posterior = sample_posterior(calibration, data, config, checkpoint=tmp_path / "nuts", progress=False)
    assert traced.count("block") == 2  # one program a tree limit: the warm-up's after the first metric is the draws'
    assert posterior.draws.shape == (2, 100, ravel_pytree(eqx.partition(calibration.estimate, calibration.mask)[0])[0].size)
    assert np.all(np.isfinite(posterior.draws)) and np.all(np.isfinite(posterior.log_density))
    assert np.ptp(posterior.step_size) == 0  # one step for all chains, from the warm-up's acceptance curve
    free = eqx.partition(calibration.estimate, calibration.mask)[0]
    like = initial_chains(config, jnp.zeros(posterior.draws.shape[::2]), len(_layout(free)[0]))
    chains = load_checkpoint(tmp_path / "nuts", like)[0]
    steps = np.asarray(chains.step)
    assert np.all(steps[0] == steps[1]) and np.ptp(steps[0, :150]) > 0  # in the warm-up too: one step, tuned
    leapfrogs = np.asarray(chains.leapfrogs)
    assert leapfrogs[:, :50].max() <= 7 < leapfrogs[:, 50:].max()  # capped until the first metric, not after

    idata = inference_data(posterior, data)
    assert set(idata.sample_stats) >= {"acceptance_rate", "step_size", "n_steps", "diverging", "lp"}
    table = diagnostics_table(idata)
    assert list(table.columns) == COLUMNS
    assert len(table) == posterior.draws.shape[-1]  # one row per scalar: parameters, years, regions
    assert any(name.startswith("attraction[") for name in table.parameter)
    compared = laplace_against_nuts(calibration, table)
    assert list(compared.parameter) == calibration.laplace.parameter_names
    # the sampled posterior sits where the Laplace approximation says, within its own spread
    sd = (compared.laplace_q95 - compared.laplace_q05) / (2 * 1.645)
    assert np.all(np.abs(compared.nuts_mean - compared.laplace_mean) < 3 * sd)
    weight = table.set_index("parameter").loc["educating_weight"]
    # the chains mix: a stuck chain or a collapsed step size gives an R-hat far above 1 and an ESS
    # of a few (measured here: 1.07 and 22 of 200 draws at the polish's fixed point)
    assert weight.rhat < 1.1 and weight.ess_bulk > 15

    again = sample_posterior(calibration, data, config, checkpoint=tmp_path / "nuts", progress=False)  # finished: read back
    np.testing.assert_array_equal(again.draws, posterior.draws)


@pytest.mark.slow
def test_without_metric_learning_the_sampler_keeps_no_warm_up_positions_and_resumes(fitted_small, tmp_path):
    data, _, calibration = fitted_small
    config = NutsConfig(chains=2, warmup=20, draws=10, block=10, rank=4, adapt_metric=False)
    posterior = sample_posterior(calibration, data, config, checkpoint=tmp_path / "nuts", progress=False)
    assert np.all(np.isfinite(posterior.draws)) and np.all(np.isfinite(posterior.log_density))
    again = sample_posterior(calibration, data, config, checkpoint=tmp_path / "nuts", progress=False)  # read back
    np.testing.assert_array_equal(again.draws, posterior.draws)
    # the checkpoint holds the draws, not the 2 x 20 warm-up positions nothing reads
    size = posterior.draws.shape[-1]
    assert (tmp_path / "nuts.eqx").stat().st_size < 8 * size * (2 * 10 + 2 * 20)


def test_a_forecast_draws_its_parameters_from_the_posterior_draws_when_given(fitted_small):
    import importlib

    forecast = importlib.import_module("diffcomm.forecast")
    data, _, calibration = fitted_small
    free = eqx.partition(calibration.estimate, calibration.mask)[0]
    at_map = np.tile(np.asarray(ravel_pytree(free)[0]), (7, 1))  # a posterior that is one point: the MAP
    years = data.patents.shape[0]
    kwargs = dict(key=jax.random.key(1), draws=20, level=0.9)
    point = forecast.forecast_patents(calibration.estimate, calibration.laplace, calibration.mask, data, years,
                                      posterior=at_map, **kwargs)
    np.testing.assert_allclose(point["mean"], point["fitted"], rtol=1e-10)  # every draw is the MAP: no parameter spread
    spread = forecast.forecast_patents(calibration.estimate, calibration.laplace, calibration.mask, data, years, **kwargs)
    assert not np.allclose(spread["mean"], spread["fitted"], rtol=1e-6)  # Laplace draws spread
