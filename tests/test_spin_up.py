"""Starting the communities where their drivers sustain them (`data.spin_up_years`)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffcomm.config import DataConfig
from diffcomm.errors import ConfigError
from diffcomm.params import Params
from diffcomm.simulate import first_knowledge, initial_state, initial_state_from_data, simulate_from_data

pytestmark = pytest.mark.usefixtures("x64")


@pytest.mark.slow
def test_the_spin_up_runs_the_communities_ahead_and_keeps_the_observed_knowledge(synthetic):
    params = Params.from_natural(1, educating_weight=0.8)
    data = synthetic(jax.random.key(3), params, num_regions=20, num_years=4)
    drivers = data.drivers

    def start(years):
        return initial_state(params, dataclasses.replace(data, spin_up_years=years), drivers)

    plain = initial_state_from_data(params, data)
    for a, b in zip(jax.tree_util.tree_leaves(start(0)), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_array_equal(a, b)  # no spin-up: the data's own state
    spun = start(160)
    np.testing.assert_allclose(spun.regions.knowledge.sum(-1), first_knowledge(params, data), rtol=1e-10)
    assert not np.allclose(spun.regions.active, plain.regions.active, rtol=0.05)
    # members approach what the drivers sustain: a year more changes them less after 160 years than after 5

    def year_more(years):
        return np.median(np.abs(np.log(start(years + 1).regions.active) - np.log(start(years).regions.active)))

    assert year_more(160) < 0.01 * year_more(5)
    # the simulation of the data starts from it, and the loss has a finite gradient through it
    later = simulate_from_data(params, dataclasses.replace(data, spin_up_years=5), 4)[1].patents
    assert not np.allclose(later, simulate_from_data(params, data, 4)[1].patents, rtol=0.01)
    spun_data = dataclasses.replace(data, spin_up_years=5)
    grad = jax.grad(lambda p: jnp.sum(jnp.log(simulate_from_data(p, spun_data, 4, checkpoint=True)[1].patents)))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grad))
    assert float(jnp.abs(grad.unconstrained["educating_weight"])) > 0

def test_an_impossible_spin_up_is_refused():
    with pytest.raises(ConfigError, match="data.spin_up_years"):
        DataConfig(spin_up_years=-1)
