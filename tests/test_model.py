"""The behaviours that docs/model.md's concept table promises, each a named test."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffcomm.inputs import Drivers, Graph, Levers
from diffcomm.model import absorption, init_state, local_buzz, overlap_formation, region_step, step, world_step
from diffcomm.params import Params

K = 2
pytestmark = pytest.mark.usefixtures("x64")


def uniform_drivers(num_regions, num_domains, **values):
    return Drivers.uniform(num_regions, num_domains, **values)


def replace(drivers, **changes):
    return dataclasses.replace(drivers, **{k: jnp.asarray(v, dtype=float) for k, v in changes.items()})


def final_active(run, params, drivers, **kw):
    final, _ = run(params, drivers, **kw)
    return final.regions.active


# -- four driving forces ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "weight, driver",
    [
        ("connecting_weight", "connecting"),
        ("educating_weight", "educating"),
        ("migrating_weight", "migrating"),
        ("specializing_weight", "specializing"),
    ],
)
def test_driver_weights_raise_communities(weight, driver, run):
    """Each driving force with a positive weight grows the community: dA/dw > 0, and w > 0 beats w = 0."""
    drivers = uniform_drivers(1, K, **{driver: 1.0})

    def total_active(w):
        params = Params.from_natural(K, **{weight: w})
        return jnp.sum(final_active(run, params, drivers, years=20))

    grad = jax.grad(total_active)(0.5)
    assert grad > 0
    assert total_active(0.5) > 1.01 * total_active(0.0)


# -- conditions ------------------------------------------------------------------------------


def test_critical_mass_bistability(run):
    """Two regions equal but for A0 just below and just above A* go to different fates."""
    params = Params.from_natural(K, critical_mass=10.0)
    drivers = uniform_drivers(2, K, mne_presence=1.0)
    final, traj = run(params, drivers, years=60, active=jnp.array([7.0, 14.0]), knowledge=10.0)
    below, above = np.asarray(final.regions.active)
    assert np.all(below < 10.0), below  # stays under the critical mass
    assert np.all(above > 10.0), above  # self-sustaining growth
    assert np.all(above > 4 * below)


def test_amenities_cut_attrition_and_raise_community(run):
    params = Params.from_natural(K)
    low = final_active(run, params, uniform_drivers(1, K, amenities=-1.0), years=30, active=20.0)
    high = final_active(run, params, uniform_drivers(1, K, amenities=1.0), years=30, active=20.0)
    assert np.all(high > low)


def test_middleground_and_anchors_raise_active_not_inflow():
    """More middleground or anchor support activates more members for the same inflow."""
    params = Params.from_natural(K)
    p = params.natural()
    graph = Graph.empty()
    state = init_state(params, graph, active=jnp.full((1, K), 5.0))
    shock = jnp.zeros(1)
    levers = Levers.zeros((1,))
    base = uniform_drivers(1, K)
    old, _, flows0 = step(p, state, base, graph, levers, shock)
    for change in (dict(middleground=[1.5]), dict(anchors=[1.5])):
        new, _, flows1 = step(p, state, replace(base, **change), graph, levers, shock)
        np.testing.assert_allclose(flows1.inflow, flows0.inflow)  # the same inflow of new members
        assert np.all(new.regions.active > old.regions.active)  # more of them become active
        assert np.all(flows1.activation > flows0.activation)


def test_place_policy_raises_active_and_local_connectedness(run):
    params = Params.from_natural(K)
    base = uniform_drivers(1, K)
    final0, _ = run(params, base, years=20)
    final1, _ = run(params, replace(base, place_policy=jnp.array([2.0])), years=20)
    assert np.all(final1.regions.active > final0.regions.active)
    assert np.all(final1.regions.local_connectedness > final0.regions.local_connectedness)


def test_low_openness_and_low_overlap_lower_learning_returns():
    params = Params.from_natural(K)
    p = params.natural()
    state = init_state(params, Graph.empty(), active=jnp.full((1, K), 10.0), overlap=0.3)
    one = jax.tree_util.tree_map(lambda x: x[0], state.regions)
    closed = jax.tree_util.tree_map(lambda x: x[0], uniform_drivers(1, K, openness=0.05))
    open_ = jax.tree_util.tree_map(lambda x: x[0], uniform_drivers(1, K, openness=0.9))
    low_overlap = dataclasses.replace(one, overlap=jnp.full(K, 0.01))
    assert np.all(local_buzz(p, one, closed) < local_buzz(p, one, open_))
    assert np.all(local_buzz(p, low_overlap, closed) < local_buzz(p, one, closed))


# -- overlap, ties, international communities -------------------------------------------------


def test_shock_to_fairs_lowers_new_overlap_not_the_stock():
    params = Params.from_natural(K)
    p = params.natural()
    state = init_state(params, Graph.empty(), active=jnp.full((1, K), 10.0), overlap=0.4)
    s = jax.tree_util.tree_map(lambda x: x[0], state.regions)
    d = jax.tree_util.tree_map(lambda x: x[0], uniform_drivers(1, K))
    members = state.world.international_members
    calm = overlap_formation(p, s, d, members, jnp.asarray(0.0))
    shocked = overlap_formation(p, s, d, members, jnp.asarray(1.0))
    assert np.all(shocked < 0.5 * calm)
    new_calm, _ = region_step(p, s, d, jnp.asarray(0.0), jnp.zeros(K), state.world)
    new_shocked, _ = region_step(p, s, d, jnp.asarray(1.0), jnp.zeros(K), state.world)
    kept = s.overlap * (1.0 - p.overlap_decay)  # the stock carried over
    assert np.all(new_shocked.overlap >= kept)
    assert np.all(new_shocked.overlap < new_calm.overlap)


def test_ties_form_faster_with_overlap_and_affinity():
    params = Params.from_natural(K)
    p = params.natural()
    # edges: 0->1 and 2->3 with equal affinity; 0->1 joins regions with more overlap; 4->5 low affinity
    graph = Graph(jnp.array([0, 2, 4]), jnp.array([1, 3, 5]), jnp.array([0.9, 0.9, 0.1]))
    overlap = jnp.array([0.6, 0.6, 0.1, 0.1, 0.6, 0.6])[:, None] * jnp.ones((1, K))
    state = init_state(params, graph, active=jnp.full((6, K), 10.0), overlap=overlap, ties=0.1)
    new = world_step(p, state.world, state.regions, graph)
    gain = np.asarray(new.ties - state.world.ties)
    assert gain[0] > gain[1]  # more overlap
    assert gain[0] > gain[2]  # more affinity


def test_ties_carry_knowledge_between_regions(run):
    """A region tied to a more knowledgeable one learns more than the same region without the tie."""
    params = Params.from_natural(K)
    drivers = uniform_drivers(2, K)
    knowledge = jnp.array([[40.0] * K, [10.0] * K])
    tied = Graph(jnp.array([0]), jnp.array([1]), jnp.array([1.0]))
    with_tie, _ = run(params, drivers, years=5, graph=tied, knowledge=knowledge, ties=0.5)
    without, _ = run(params, drivers, years=5, knowledge=knowledge)
    assert np.all(with_tie.regions.knowledge[1] > without.regions.knowledge[1])


def test_coupling_through_the_international_community(run):
    """One region's growth raises the international frontier and so the others' pipeline gains."""
    params = Params.from_natural(K)
    drivers = uniform_drivers(4, K)
    boosted = replace(drivers, educating=jnp.array([3.0, 0.0, 0.0, 0.0]), connecting=jnp.array([3.0, 0, 0, 0]))
    _, base = run(params, drivers, years=30, active=10.0, knowledge=20.0)
    _, grown = run(params, boosted, years=30, active=10.0, knowledge=20.0)
    # no ties in this graph: the only path from region 0 to the others is the international community
    assert np.all(grown.regions.active[-1, 0] > base.regions.active[-1, 0])
    assert np.all(grown.flows.pipeline[-1, 1:] > base.flows.pipeline[-1, 1:])
    assert np.all(grown.regions.knowledge[-1, 1:] > base.regions.knowledge[-1, 1:])


# -- localized learning ------------------------------------------------------------------------


def test_inverted_u_absorption():
    """Pipeline gain is zero at distance 0, peaks at d*, falls beyond; nothing below 0."""
    p = Params.from_natural(K, best_distance=1.5).natural()
    d = jnp.linspace(-2.0, 8.0, 1001)
    gain = np.asarray(absorption(p, d))
    assert absorption(p, jnp.asarray(0.0)) == 0.0
    assert np.all(gain[d <= 0] == 0.0)
    peak = float(d[np.argmax(gain)])
    assert abs(peak - 1.5) < 0.02
    np.testing.assert_allclose(gain.max(), 1.0, atol=1e-4)
    rising, falling = gain[(d > 0) & (d < 1.5)], gain[d > 1.5]
    assert np.all(np.diff(rising) > 0) and np.all(np.diff(falling) < 0)


# -- co-evolution loop --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "closed_link",
    [
        dict(export_community_weight=0.0),  # community -> internationalization
        dict(development_export_gain=1e-9),  # internationalization -> development
        dict(development_inflow_weight=0.0, development_amenity_weight=0.0),  # development -> community
    ],
)
def test_closing_any_link_weakens_the_loop(closed_link, run):
    drivers = uniform_drivers(1, K, educating=1.0)
    open_final, _ = run(Params.from_natural(K), drivers, years=30, active=15.0)
    closed_final, _ = run(Params.from_natural(K, **closed_link), drivers, years=30, active=15.0)
    assert float(jnp.sum(closed_final.regions.active)) < 0.99 * float(jnp.sum(open_final.regions.active))


# -- MNE strategy and local connectedness (L,M&S) ---------------------------------------------


def test_spawning_renews_local_connectedness_orchestration_erodes_it(run):
    """Propositions 2 and 3: more local spawning, more connectedness and a larger catchment share."""
    params = Params.from_natural(K)
    orchestration = uniform_drivers(1, K, mne_presence=1.5, spawning_share=0.1)
    spawning = uniform_drivers(1, K, mne_presence=1.5, spawning_share=0.9)
    start = 0.6
    f_orch, t_orch = run(params, orchestration, years=40, active=15.0, local_connectedness=start)
    f_spawn, t_spawn = run(params, spawning, years=40, active=15.0, local_connectedness=start)
    assert f_orch.regions.local_connectedness[0] < start  # erodes
    assert f_spawn.regions.local_connectedness[0] > start  # renews
    assert f_spawn.regions.catchment_share[0] > f_orch.regions.catchment_share[0]


def test_internationalization_raises_development_but_can_lower_catchment_share(run):
    params = Params.from_natural(K)
    little = uniform_drivers(1, K, mne_presence=0.1, spawning_share=0.1)
    much = uniform_drivers(1, K, mne_presence=3.0, spawning_share=0.1)
    f_little, t_little = run(params, little, years=40, active=15.0)
    f_much, t_much = run(params, much, years=40, active=15.0)
    assert t_much.observations.exports_intensity[-1, 0] > t_little.observations.exports_intensity[-1, 0]
    assert f_much.regions.development[0] > f_little.regions.development[0]
    assert f_much.regions.catchment_share[0] < f_little.regions.catchment_share[0]


# -- disruption -------------------------------------------------------------------------------


def test_shock_dents_flows_and_recovers_knowledge_barely_moves(run):
    params = Params.from_natural(K)
    drivers = uniform_drivers(1, K, educating=1.0)
    years, start, length = 80, 30, 2
    shock = jnp.zeros((years, 1)).at[start : start + length].set(1.0)
    _, calm = run(params, drivers, years=years, active=15.0)
    _, hit = run(params, drivers, years=years, active=15.0, shock=shock)

    def rel(a, b):
        return np.asarray((a - b) / b)

    f_dent = rel(hit.regions.internationalization, calm.regions.internationalization)[:, 0].mean(-1)
    inflow_dent = rel(hit.flows.inflow, calm.flows.inflow)[:, 0].mean(-1)
    g_dent = rel(hit.regions.knowledge, calm.regions.knowledge)[:, 0].mean(-1)
    assert f_dent[start + length - 1] < -0.15  # F dented
    assert inflow_dent[start] < -0.5  # inflow dented
    assert abs(f_dent[-1]) < 0.01 and abs(inflow_dent[-1]) < 0.01  # recovered
    # knowledge moves far less than the tangible flows: it only follows the community, with a lag
    assert np.max(np.abs(g_dent)) < 0.4 * np.max(np.abs(f_dent))
    assert np.max(np.abs(g_dent)) < 0.1 * np.max(np.abs(inflow_dent))
    assert abs(g_dent[-1]) < 0.3 * np.max(np.abs(g_dent))  # and it recovers too


def test_the_nonlocal_share_reads_the_tie_graph_only_through_its_slope(run):
    """Region 0 has three ties (in and out), region 2 none; all else is equal. At the default
    slope 0 the graph does not move the non-local share; a positive slope raises the share of the
    region with the stronger ties."""
    graph = Graph(source=jnp.array([0, 0, 1]), target=jnp.array([1, 1, 0]), affinity=jnp.ones(3))
    drivers = Drivers.uniform(3, 2)
    flat = run(Params.from_natural(2), drivers, years=3, graph=graph)[1].observations.nonlocal_share
    np.testing.assert_allclose(flat[:, 0], flat[:, 2], rtol=1e-6)
    sloped = run(Params.from_natural(2, nonlocal_tie_slope=1.0), drivers, years=3, graph=graph)[1].observations.nonlocal_share
    assert np.all(np.asarray(sloped[:, 0]) > np.asarray(sloped[:, 2]) + 0.01)
    np.testing.assert_allclose(sloped[:, 2], flat[:, 2], rtol=1e-6)  # no ties: as without the slope
