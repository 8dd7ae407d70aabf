"""Ensembles: scenarios x parameter draws x regions in one compiled call equal the simulations
one by one, whatever the chunking."""

import jax
import numpy as np
import pytest

from diffcomm.ensemble import SUMMED, VARIABLES, lever_forcings, run_ensemble, scenario_label
from diffcomm.params import Params
from diffcomm.scenario import synthetic_regions
from diffcomm.simulate import simulate, stack


@pytest.fixture(scope="module")
def problem():
    params = [Params.from_natural(2, connecting_weight=w, educating_weight=e) for w, e in ((0.2, 0.3), (0.5, 0.5), (0.9, 0.1))]
    regions = synthetic_regions(params[0], {"world_city": 2, "normal_region": 4}, key=jax.random.key(1), ties_per_region=2)
    settings = [{}, {"middleground": 1.0}]
    shock = np.zeros((6, regions.num_regions))
    shock[2:4] = 0.5
    forcings = lever_forcings(settings, {"education": 0.2}, 6, regions.num_regions, shock)
    return params, regions, settings, forcings


@pytest.mark.parametrize("chunk", [None, 2])  # 2: three draws in two calls, the second padded
def test_the_ensemble_equals_each_simulation_on_its_own(problem, chunk):
    params, regions, settings, forcings = problem
    ensemble = run_ensemble(stack(params), regions.initial, regions.drivers, regions.graph, forcings,
                            scenarios=tuple(map(scenario_label, settings)), regions=regions.region_names,
                            years=np.arange(1, 7), draws_mapped=False, chunk=chunk)
    assert ensemble.scenarios == ("base", "middleground=1") and ensemble.draws == 3
    for s in range(2):
        forcing = jax.tree_util.tree_map(lambda x: x[s], forcings)
        for n, one in enumerate(params):
            final, traj = simulate(one, regions.initial, regions.drivers, regions.graph, forcing, record_states=False)
            for variable in VARIABLES:
                values = np.asarray(getattr(traj.observations, variable))
                expected = values.sum(-1) if variable in SUMMED else values.mean(-1)
                np.testing.assert_allclose(ensemble.aggregates[variable][s, n], expected, rtol=1e-5, err_msg=variable)
            np.testing.assert_allclose(ensemble.last_patents[s, n], np.asarray(traj.observations.patents[-1]), rtol=1e-5)
            np.testing.assert_allclose(ensemble.last_active[s, n], np.asarray(final.regions.active.sum(-1)), rtol=1e-5)
    assert not np.allclose(ensemble.aggregates["patents"][0], ensemble.aggregates["patents"][1])  # the lever acts


def test_lever_settings_add_to_the_base_levers_in_every_region_and_year(problem):
    _, regions, _, forcings = problem
    assert forcings.levers.education.shape == (2, 6, regions.num_regions)
    np.testing.assert_allclose(forcings.levers.education, 0.2)
    np.testing.assert_allclose(forcings.levers.middleground[0], 0.0)
    np.testing.assert_allclose(forcings.levers.middleground[1], 1.0)
    np.testing.assert_allclose(forcings.shock[1, 2:4], 0.5)  # every scenario has the shock


def test_the_tables_summarise_over_the_draws(problem):
    params, regions, settings, forcings = problem
    ensemble = run_ensemble(stack(params), regions.initial, regions.drivers, regions.graph, forcings,
                            scenarios=("a", "b"), regions=regions.region_names, years=np.arange(1, 7), draws_mapped=False)
    table = ensemble.table()
    assert list(table.columns) == ["scenario", "variable", "aggregate", "year", "mean", "q05", "q50", "q95"]
    assert len(table) == 2 * len(VARIABLES) * 6 and not table.duplicated(["scenario", "variable", "year"]).any()
    assert (table.q05 <= table.q50).all() and (table.q50 <= table.q95).all()
    patents = table[(table.scenario == "b") & (table.variable == "patents")]
    np.testing.assert_allclose(patents["mean"], ensemble.aggregates["patents"][1].mean(0))
    regions_table = ensemble.region_table()
    assert list(regions_table.columns) == ["scenario", "region", "variable", "mean", "q05", "q50", "q95"]
    last = regions_table[(regions_table.scenario == "b") & (regions_table.variable == "patents")]
    np.testing.assert_allclose(last["mean"].sum(), patents["mean"].iloc[-1], rtol=1e-5)  # the sum's mean = the means' sum
