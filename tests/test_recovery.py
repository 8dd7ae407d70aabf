"""Parameter recovery on one synthetic panel: the calibration finds known parameters again.

A small version of ``experiments/recovery`` (see its README for the full study): the 40 real
regions with the most patents in 2000 (their drivers, ties, first-year patents and linkage
totals), latent region and year effects drawn from their N(0, 1) priors, counts drawn from the
observation model at known parameters, then `calibrate` with the default free parameters and
prior (one start and no L-BFGS polish, to keep the test short) and its Laplace approximation.

At 40 regions the data identify two of the five driver weights (connecting, through the
non-local share of the linkage counts, and amenities, through the attrition of active members);
the other three act only through the inflow of new members, whose effect on ten years of patents
is small, so their standard errors stay near the prior's (sd 1) and only consistency with the
truth is asked of them.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffcomm.calibrate import calibrate
from diffcomm.config import CalibrateConfig, DataConfig, FitConfig
from diffcomm.data import load_dataset
from diffcomm.effects import Effects, Estimate
from diffcomm.loss import expected_patents
from diffcomm.observation import sample_counts
from diffcomm.params import Params

pytestmark = pytest.mark.usefixtures("x64")

TRUTH = dict(connecting_weight=0.3, educating_weight=0.4, migrating_weight=0.2, specializing_weight=0.3, amenity_weight=0.2,
             attraction_scale=0.6, buzz_quality_scale=0.3, national_drift=0.01, national_shock_scale=0.05,
             national_persistence=0.5)
DRIVER_WEIGHTS = ("connecting_weight", "educating_weight", "migrating_weight", "specializing_weight", "amenity_weight")
IDENTIFIED_WEIGHTS = ("connecting_weight", "amenity_weight")  # se well below the prior's 1 at 40 regions


def synthetic_panel(key, truth: Params, data):
    """`data` with patents (negative binomial) and non-local counts (beta-binomial) drawn from the
    model at `truth`, with N(0, 1) attraction, buzz-quality and national effects."""
    p = truth.natural()
    num_regions, num_years = data.num_regions, data.patents.shape[0]
    ks = jax.random.split(key, 6)
    effects = eqx.tree_at(lambda e: (e.attraction, e.buzz_quality, e.year), Effects.zeros(num_regions, num_years),
                          (jax.random.normal(ks[0], (num_regions,)), jax.random.normal(ks[1], (num_regions,)),
                           jax.random.normal(ks[2], (num_years,))))
    mean, nonlocal_share = expected_patents(Estimate(truth, effects), data)
    share = jnp.sum(nonlocal_share * data.window[:, None], axis=0) / jnp.sum(data.window)
    c = p.nonlocal_concentration
    probability = jax.random.beta(ks[4], c * share, c * (1.0 - share))
    patents = sample_counts(ks[3], mean, p.patents_dispersion) * data.patents_mask
    nonlocal_count = jax.random.binomial(ks[5], data.linkage_total, probability).astype(share.dtype) * data.linkage_mask
    return eqx.tree_at(lambda d: (d.patents, d.nonlocal_count), data, (patents, nonlocal_count))


@pytest.mark.slow
def test_calibration_recovers_known_parameters_on_real_regions():
    full = load_dataset(CalibrateConfig().data)
    largest = np.argsort(-np.asarray(full.first_patents), kind="stable")[:40]
    data_config = DataConfig(regions=[full.codes[i] for i in largest])
    data = load_dataset(data_config)
    truth = Params.from_natural(1, **TRUTH)
    synthetic = synthetic_panel(jax.random.key(1), truth, data)
    assert float(jnp.sum(synthetic.patents)) > 0 and float(jnp.sum(synthetic.nonlocal_count)) > 0

    # the recipe of `diffcomm calibrate` at a test's size: one start, Adam only (the L-BFGS polish
    # would double the compile time); the Laplace approximation at the result
    config = CalibrateConfig(data=data_config, fit=FitConfig(region_effects=["attraction", "buzz_quality"], restarts=1,
                                                            steps=300, polish_steps=0, progress=False))
    calibration = calibrate(synthetic, config)
    approx = calibration.laplace

    losses = np.asarray(calibration.restarts.history["loss"])[:, 0]
    assert calibration.restarts.best_loss < losses[0] - 1e-3  # the fit moved from the prior centre
    assert approx.positive_definite
    names = approx.parameter_names
    assert set(names) == set(config.fit.free)
    p = truth.natural()
    estimate = dict(zip(names, approx.natural))
    se = dict(zip(names, approx.natural_se))
    assert all(np.isfinite(se[name]) and se[name] > 0 for name in names)
    for name in DRIVER_WEIGHTS:
        truth_value = float(getattr(p, name))
        assert abs(estimate[name] - truth_value) <= 3 * se[name], (name, estimate[name], truth_value, se[name])
    # and every other free parameter as well
    far = {name: round(float((estimate[name] - float(getattr(p, name))) / se[name]), 2) for name in names
           if abs(estimate[name] - float(getattr(p, name))) > 3 * se[name]}
    assert not far, f"estimates more than 3 se from the truth (in se): {far}"
    for name in IDENTIFIED_WEIGHTS:
        assert se[name] < 0.6, (name, se[name])
    # the effect scale is estimated as a variance component, not collapsed to zero
    assert abs(estimate["attraction_scale"] - TRUTH["attraction_scale"]) < estimate["attraction_scale"]
