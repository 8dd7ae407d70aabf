"""The NumPy yardstick of the benchmark computes the same numbers as the JAX model (float64)."""

import jax.numpy as jnp
import numpy as np
import pytest
from bench_simulate import numpy_inputs, scenario_of_size  # benchmarks/ is on pytest's pythonpath
from numpy_reference import simulate_numpy

from diffcomm.inputs import Levers
from diffcomm.params import Params
from diffcomm.simulate import make_forcing, simulate


@pytest.mark.usefixtures("x64")
def test_numpy_reference_equals_jax_in_float64(key):
    params = Params.from_natural(3)
    sc = scenario_of_size(params, 60, key)
    T, R = 30, sc.num_regions
    levers = Levers(*(jnp.full((T, R), v) for v in (0.3, 0.2, 0.5, -0.2, 0.4, 0.7)))
    forcing = make_forcing(T, R, levers=levers, shock=jnp.zeros((T, R)).at[10:12].set(0.8))
    _, traj = simulate(params, sc.initial, sc.drivers, sc.graph, forcing, record_states=False)
    reference = simulate_numpy(*numpy_inputs(params, sc, forcing, np.float64))
    for name, values in reference.items():
        np.testing.assert_allclose(np.asarray(getattr(traj.observations, name)), values, rtol=1e-9, err_msg=name)
