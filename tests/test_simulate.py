"""The simulation machinery: jit, vmap, gradients, long horizons, retracing, ensembles."""

import dataclasses
import importlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffcomm.inputs import Levers
from diffcomm.model import region_step, step, tie_knowledge
from diffcomm.params import PARAMETERS, Params
from diffcomm.scenario import ARCHETYPES, synthetic_regions
from diffcomm.simulate import make_forcing, simulate, simulate_ensemble, stack

K = 2


@pytest.fixture
def scenario(key, x64):
    params = Params.from_natural(K)
    return params, synthetic_regions(params, {n: 2 for n in ARCHETYPES}, key=key, ties_per_region=3)


def test_a_forcing_without_levers_stores_none_and_simulates_as_zero_levers_do(scenario):
    """No policy is no lever arrays (six (T, R) arrays of zeros cost memory at scale), and the
    same simulation, to the last bit, as levers all at zero; a nonzero lever still moves it."""
    params, sc = scenario
    T, R = 6, sc.num_regions
    plain = make_forcing(T, R, shock=0.2)
    assert plain.levers is None
    zero = make_forcing(T, R, levers=Levers.zeros(), shock=0.2)
    assert zero.levers.education.shape == (T, R)
    _, a = simulate(params, sc.initial, sc.drivers, sc.graph, plain)
    _, b = simulate(params, sc.initial, sc.drivers, sc.graph, zero)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    moved = make_forcing(T, R, levers=dataclasses.replace(Levers.zeros(), education=jnp.asarray(1.0)), shock=0.2)
    _, c = simulate(params, sc.initial, sc.drivers, sc.graph, moved)
    assert not np.allclose(c.observations.patents, a.observations.patents)


def test_trajectory_shapes_and_dtypes(scenario):
    params, sc = scenario
    T, R = 7, sc.num_regions
    final, traj = simulate(params, sc.initial, sc.drivers, sc.graph, make_forcing(T, R))
    for name in ("patents", "coinvention_share", "nonlocal_share", "exports_intensity", "development"):
        value = getattr(traj.observations, name)
        assert value.shape == (T, R) and value.dtype == jnp.float64
    assert traj.regions.active.shape == (T, R, K)
    assert final.world.ties.shape == sc.graph.source.shape
    np.testing.assert_allclose(traj.regions.active[-1], final.regions.active)


def test_jit_equals_eager(scenario):
    params, sc = scenario
    forcing = make_forcing(10, sc.num_regions, shock=0.3)
    jitted = simulate(params, sc.initial, sc.drivers, sc.graph, forcing)
    with jax.disable_jit():
        eager = simulate(params, sc.initial, sc.drivers, sc.graph, forcing)
    for a, b in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_vmap_over_regions_equals_a_python_loop(scenario):
    params, sc = scenario
    p = params.natural()
    R = sc.num_regions
    levers = Levers.zeros((R,))
    shock = jnp.linspace(0.0, 1.0, R)
    state = sc.initial
    batched, _, _ = step(p, state, sc.drivers, sc.graph, levers, shock)
    from_ties = tie_knowledge(p, state.regions.knowledge, sc.graph, state.world.ties)
    for r in range(R):
        one = lambda tree: jax.tree_util.tree_map(lambda x: x[r], tree)  # noqa: E731
        looped, _ = region_step(p, one(state.regions), one(sc.drivers), shock[r], from_ties[r], state.world)
        for a, b in zip(jax.tree_util.tree_leaves(looped), jax.tree_util.tree_leaves(one(batched.regions))):
            np.testing.assert_allclose(a, b, rtol=1e-13)


def _scalar_output(params, sc, forcing):
    _, traj = simulate(params, sc.initial, sc.drivers, sc.graph, forcing)
    obs = traj.observations
    return (
        jnp.mean(jnp.log(obs.patents))
        + jnp.mean(obs.nonlocal_share)
        + jnp.mean(obs.coinvention_share)
        + jnp.mean(jnp.log(obs.development))
        + jnp.mean(jnp.log(obs.exports_intensity))
        + jnp.mean(traj.regions.catchment_share)
        + jnp.mean(jnp.log(traj.regions.active))
    )


def test_gradients_match_central_finite_differences_for_every_parameter(key, x64):
    params = Params.from_natural(K)
    sc = synthetic_regions(params, {"world_city": 1, "university_city": 1, "normal_region": 2}, key=key)
    forcing = make_forcing(12, sc.num_regions, shock=jnp.zeros((12, 4)).at[5].set(0.5))
    loss = jax.jit(lambda prm: _scalar_output(prm, sc, forcing))
    grads = jax.grad(loss)(params)
    h = 1e-6
    for name in PARAMETERS:  # every entry of every parameter, on the unconstrained scale
        value = params.unconstrained[name]
        for index in np.ndindex(value.shape):
            bump = jnp.zeros_like(value).at[index].set(h)
            up = eqx.tree_at(lambda p: p.unconstrained[name], params, value + bump)
            down = eqx.tree_at(lambda p: p.unconstrained[name], params, value - bump)
            fd = (loss(up) - loss(down)) / (2 * h)
            np.testing.assert_allclose(grads.unconstrained[name][index], fd, rtol=1e-5, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_positive_bounded_and_finite_over_200_years_under_extreme_drivers(key, precision):
    """In double precision and in float32, the simulate default: no clipping keeps it so."""
    with jax.enable_x64(precision == "float64"):
        _extreme_run(key, precision)


def _extreme_run(key, precision):
    params = Params.from_natural(K)
    counts = {n: 3 for n in ARCHETYPES}
    sc = synthetic_regions(params, counts, key=key, ties_per_region=4)
    R = sc.num_regions
    k1, k2, k3 = jax.random.split(key, 3)
    extreme = lambda k, shape: 6.0 * jnp.sign(jax.random.normal(k, shape))  # noqa: E731
    drivers = dataclasses.replace(
        sc.drivers,
        connecting=extreme(k1, (R,)),
        educating=-extreme(k1, (R,)),
        migrating=extreme(k2, (R,)),
        specializing=extreme(k3, (R, K)),
        amenities=extreme(k2, (R,)),
        anchors=-extreme(k3, (R,)),
        middleground=extreme(k3, (R,)),
        place_policy=-extreme(k2, (R,)),
        openness=jnp.where(jnp.arange(R) % 2 == 0, 0.0, 4.0),
        mne_presence=jnp.where(jnp.arange(R) % 3 == 0, 0.0, 6.0),
        spawning_share=jnp.where(jnp.arange(R) % 2 == 0, 0.0, 1.0),
    )
    T = 200
    shock = (jax.random.uniform(k1, (T, R)) < 0.1).astype(float)
    forcing = make_forcing(T, R, shock=shock)
    final, traj = simulate(params, sc.initial, drivers, sc.graph, forcing)
    assert traj.regions.active.dtype == jnp.dtype(precision)
    s = traj.regions
    for name in ("active", "passive", "knowledge", "internationalization", "development"):
        value = np.asarray(getattr(s, name))
        assert np.all(np.isfinite(value)) and np.all(value > 0), name
    for name in ("overlap", "catchment_share"):
        value = np.asarray(getattr(s, name))
        assert np.all((value > 0) & (value < 1)), name
    # 1 - Lc, stored: with no erosion (spawning share 1) it decays geometrically, and float32 reaches
    # its limit 0 after about 150 years; float64 keeps it positive
    disconnection = np.asarray(s.disconnection)
    assert np.all((disconnection >= 0) & (disconnection < 1)) and np.all(np.asarray(s.local_connectedness) > 0)
    if precision == "float64":
        assert np.all(disconnection > 0)
    for leaf in jax.tree_util.tree_leaves(traj.observations):
        assert np.all(np.isfinite(np.asarray(leaf)))
    w = np.asarray(final.world.ties)
    assert np.all((w > 0) & (w < 1))

    def loss(prm):
        _, t = simulate(prm, sc.initial, drivers, sc.graph, forcing, record_states=False)
        return jnp.mean(jnp.log(t.observations.patents)) + jnp.mean(t.observations.nonlocal_share)

    grads = jax.grad(loss)(params)
    for leaf in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(np.asarray(leaf)))


def test_no_retrace_on_a_second_call_of_the_same_shapes(scenario, monkeypatch):
    params, sc = scenario
    R = sc.num_regions
    traces = []

    def counted_step(*args):  # the year's step is called only while `simulate` is traced
        traces.append(1)
        return step(*args)

    monkeypatch.setattr(importlib.import_module("diffcomm.simulate"), "step", counted_step)  # the module, not the function
    simulate(params, sc.initial, sc.drivers, sc.graph, make_forcing(9, R, shock=0.2))
    before = len(traces)
    assert before >= 1  # the first call of these shapes was traced (and counted)
    other = Params.from_natural(K, educating_weight=2.0)
    simulate(other, sc.initial, sc.drivers, sc.graph, make_forcing(9, R, shock=0.5))
    simulate(params, sc.initial, sc.drivers, sc.graph, make_forcing(9, R, shock=0.1))
    assert len(traces) == before
    simulate(params, sc.initial, sc.drivers, sc.graph, make_forcing(13, R, shock=0.2))  # a new shape traces again
    assert len(traces) > before


def test_ensemble_equals_separate_runs(scenario):
    params, sc = scenario
    R = sc.num_regions
    intensities = [0.0, 0.5, 1.0]
    weights = [0.2, 0.5, 1.0]
    forcings = [make_forcing(8, R, shock=jnp.zeros((8, R)).at[3].set(x)) for x in intensities]
    draws = [Params.from_natural(K, educating_weight=w) for w in weights]
    final, traj = simulate_ensemble(stack(draws), sc.initial, sc.drivers, sc.graph, stack(forcings))
    assert traj.observations.patents.shape == (3, 8, R)
    for i in range(3):
        _, single = simulate(draws[i], sc.initial, sc.drivers, sc.graph, forcings[i], record_states=False)
        np.testing.assert_allclose(traj.observations.patents[i], single.observations.patents, rtol=1e-12)


def test_ensemble_over_initial_states_equals_separate_runs(scenario):
    params, sc = scenario
    R = sc.num_regions
    regions = sc.initial.regions
    starts = [dataclasses.replace(sc.initial, regions=dataclasses.replace(regions, active=regions.active * f))
              for f in (0.5, 1.0, 2.0)]
    forcing = make_forcing(6, R)
    _, traj = simulate_ensemble(params, stack(starts), sc.drivers, sc.graph, forcing, in_axes=(None, 0, None, None, None))
    for i, start in enumerate(starts):
        _, single = simulate(params, start, sc.drivers, sc.graph, forcing, record_states=False)
        np.testing.assert_allclose(traj.observations.patents[i], single.observations.patents, rtol=1e-12)


def test_a_long_checkpointed_simulation_has_the_gradient_of_the_stored_one(key, x64):
    """From `NESTED_CHECKPOINT_YEARS` on, a checkpointed simulation runs in checkpointed blocks of
    about sqrt(T) years (less memory); its value and gradient are those of the plain scan."""
    years = 75  # 8 blocks of 8 years, then 11 years more
    assert years >= importlib.import_module("diffcomm.simulate").NESTED_CHECKPOINT_YEARS
    params = Params.from_natural(2)
    sc = synthetic_regions(params, {"world_city": 2, "normal_region": 4}, key=key, ties_per_region=2)
    forcing = make_forcing(years, sc.num_regions, shock=jnp.zeros((years, sc.num_regions)).at[30:32].set(0.5))

    def loss(p, checkpoint):
        _, traj = simulate(p, sc.initial, sc.drivers, sc.graph, forcing, record_states=False, checkpoint=checkpoint)
        return jnp.mean(jnp.log(traj.observations.patents)) + jnp.mean(traj.observations.nonlocal_share[::7])

    stored, blocked = (jax.value_and_grad(loss)(params, c) for c in (False, True))
    np.testing.assert_allclose(blocked[0], stored[0], rtol=1e-13)
    for a, b in zip(jax.tree_util.tree_leaves(stored[1]), jax.tree_util.tree_leaves(blocked[1])):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-14)
