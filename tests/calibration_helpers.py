"""Synthetic calibration data generated from known parameters."""

import dataclasses

import jax
import jax.numpy as jnp

from diffcomm.loss import CalibrationInputs, nb_sample, predict
from diffcomm.model import Drivers, Graph


def synthetic_inputs(key, truth, *, num_regions=300, num_years=15, with_linkages=False) -> CalibrationInputs:
    """Regions with random drivers; patents drawn from the model with parameters `truth`."""
    R, T = num_regions, num_years
    ks = jax.random.split(key, 8)
    normal = lambda k: jax.random.normal(k, (R,))  # noqa: E731
    drivers = Drivers(
        connecting=normal(ks[0]), educating=normal(ks[1]), migrating=normal(ks[2]), specializing=normal(ks[3])[:, None],
        amenities=jnp.zeros(R), openness=jnp.full(R, 0.5), anchors=jnp.zeros(R), middleground=jnp.zeros(R),
        place_policy=jnp.zeros(R), mne_presence=jnp.ones(R), spawning_share=jnp.full(R, 0.5),
    )
    first = jnp.round(jnp.exp(3.0 + jax.random.normal(ks[4], (R,))))
    total = jnp.round(jnp.exp(5.0 + jax.random.normal(ks[7], (R,)))) if with_linkages else jnp.zeros(R)
    inputs = CalibrationInputs(
        drivers, Graph.empty(), first, jnp.exp(2.0 + 0.7 * jax.random.normal(ks[5], (R,))), jnp.full(R, 0.2),
        jnp.zeros((T, R)), jnp.ones((T, R)), jnp.round(0.3 * total), total, jnp.full(R, float(with_linkages)),
    )
    mean = predict(truth, inputs, T).patents
    return dataclasses.replace(inputs, patents=nb_sample(ks[6], mean, truth.natural().patents_dispersion))
