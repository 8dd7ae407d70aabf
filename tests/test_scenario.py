"""Synthetic regions of the archetypes and the forcing a scenario config asks for."""

import jax
import numpy as np
import pytest

from diffcomm.config import ScenarioConfig, ShockConfig
from diffcomm.params import Params
from diffcomm.scenario import scenario_from_config, synthetic_regions


def test_scenario_generator_is_seeded_and_counts_archetypes(key):
    params = Params.from_natural(3)
    counts = {"world_city": 2, "normal_region": 5, "specialized_cluster": 1}
    a = synthetic_regions(params, counts, key=key)
    b = synthetic_regions(params, counts, key=key)
    c = synthetic_regions(params, counts, key=jax.random.key(1))
    assert a.num_regions == 8 and a.drivers.specializing.shape == (8, 3)
    assert sorted(a.archetype_names) == sorted(counts)
    assert [int((a.archetype == i).sum()) for i in range(3)] == [counts[n] for n in a.archetype_names]
    np.testing.assert_array_equal(a.drivers.connecting, b.drivers.connecting)
    assert not np.allclose(a.drivers.connecting, c.drivers.connecting)
    with pytest.raises(ValueError, match="unknown archetype"):
        synthetic_regions(params, {"moon_base": 1}, key=key)
    with pytest.raises(ValueError, match="non-negative integer"):
        synthetic_regions(params, {"world_city": -1}, key=key)


def test_ties_are_incoming_to_every_region(key):
    params = Params.from_natural(1)
    sc = synthetic_regions(params, {"world_city": 3, "normal_region": 7}, key=key, ties_per_region=4)
    incoming = np.bincount(np.asarray(sc.graph.target), minlength=sc.num_regions)
    assert (incoming == 4).all()
    assert (np.asarray(sc.graph.source) != np.asarray(sc.graph.target)).all()


def test_config_shock_hits_the_named_archetypes_in_its_window():
    params = Params.from_natural(1)
    config = ScenarioConfig(counts={"world_city": 2, "normal_region": 3}, years=10,
                            shock=ShockConfig(intensity=0.7, start=4, duration=3, archetypes=["normal_region"]),
                            levers={"middleground": 1.5})
    sc, forcing = scenario_from_config(params, config)
    shock = np.asarray(forcing.shock)
    assert shock.shape == (10, 5)
    normal = np.asarray(sc.archetype) == sc.archetype_names.index("normal_region")
    np.testing.assert_allclose(shock[3:6][:, normal], 0.7)  # years 4, 5, 6 (1-based)
    assert shock[:, ~normal].max() == 0 and shock[:3].max() == 0 and shock[6:].max() == 0
    np.testing.assert_allclose(forcing.levers.middleground, 1.5)
    np.testing.assert_allclose(forcing.levers.education, 0.0)


def test_config_is_checked_when_it_is_made():
    with pytest.raises(ValueError, match="scenario.shock.start must be a year within the 10 simulated"):
        ScenarioConfig(years=10, shock=ShockConfig(intensity=0.5, start=500))
    ScenarioConfig(years=10, shock=ShockConfig(intensity=0.0, start=500))  # no shock: its start does not matter
    with pytest.raises(ValueError, match="scenario.counts.moon_base must be one of"):
        ScenarioConfig(counts={"moon_base": 1})
    with pytest.raises(ValueError, match="scenario.levers.bribes must be a lever"):
        ScenarioConfig(levers={"bribes": 1.0})
