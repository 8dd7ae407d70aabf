"""Run the model over years (`lax.scan`), over regions (`vmap` inside `step`) and ensembles.

`simulate` is compiled once per shape with `eqx.filter_jit`; `simulate_ensemble` adds a second
`vmap` over scenarios or parameter draws so that a whole ensemble is one compiled call.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .model import Drivers, Flows, Forcing, Graph, Levers, Observations, Params, RegionState, State, step


class Trajectory(eqx.Module):
    """What a simulation records, with leading axes (T, R).

    `observations` is always there; `regions` and `flows` only with `record_states=True`
    (they cost memory: 5 (R, K) arrays a year).
    """

    observations: Observations
    regions: RegionState | None
    flows: Flows | None


def make_forcing(
    num_years: int,
    num_regions: int,
    *,
    levers: Levers | None = None,
    shock: Float[Array, "t r"] | None = None,
) -> Forcing:
    """Forcing for `num_years` years; levers and shocks broadcast to (T, R), default zero."""
    shape = (num_years, num_regions)
    if levers is None:
        levers = Levers.zeros(shape)
    else:
        levers = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(jnp.asarray(x, dtype=float), shape), levers)
    shock = jnp.zeros(shape) if shock is None else jnp.broadcast_to(jnp.asarray(shock, dtype=float), shape)
    return Forcing(levers=levers, shock=shock)


@eqx.debug.assert_max_traces(max_traces=None)  # counts traces, for the no-retrace test
def _simulate(
    params: Params,
    initial: State,
    drivers: Drivers,
    graph: Graph,
    forcing: Forcing,
    record_states: bool,
    checkpoint: bool = False,
) -> tuple[State, Trajectory]:
    p = params.natural()

    def one_year(state: State, inputs):
        levers, shock = inputs
        new_state, observations, flows = step(p, state, drivers, graph, levers, shock)
        if record_states:
            return new_state, (observations, new_state.regions, flows)
        return new_state, (observations, None, None)

    if checkpoint:  # recompute each year's internals on the backward pass instead of storing them
        one_year = jax.checkpoint(one_year)
    final, (observations, regions, flows) = jax.lax.scan(one_year, initial, (forcing.levers, forcing.shock))
    return final, Trajectory(observations, regions, flows)


def simulate(
    params: Params,
    initial: State,
    drivers: Drivers,
    graph: Graph,
    forcing: Forcing,
    *,
    record_states: bool = True,
    checkpoint: bool = False,
) -> tuple[State, Trajectory]:
    """Simulate T years for R regions.

    **Arguments:**

    - `params`: model parameters.
    - `initial`: state at the start (`init_state`).
    - `drivers`: region drivers, leading axis R.
    - `graph`: cross-local tie graph.
    - `forcing`: levers and shocks, leading axes (T, R); T is the number of years simulated.
    - `record_states`: also return the regional state and flows every year.
    - `checkpoint`: under reverse-mode differentiation, recompute each year's intermediate values
      instead of storing them (`jax.checkpoint`): memory O(T R) instead of O(T R x internals).

    **Returns:** `(final_state, trajectory)`; the trajectory has leading axes (T, R).

    ```python
    final, traj = simulate(params, init, drivers, graph, make_forcing(50, R))
    traj.observations.patents  # (50, R)
    ```
    """
    return _simulate_jit(params, initial, drivers, graph, forcing, record_states, checkpoint)


_simulate_jit = eqx.filter_jit(_simulate)


@eqx.filter_jit
def simulate_ensemble(
    params: Params,
    initial: State,
    drivers: Drivers,
    graph: Graph,
    forcing: Forcing,
    *,
    in_axes: tuple = (0, None, None, None, 0),
    record_states: bool = False,
) -> tuple[State, Trajectory]:
    """Simulate an ensemble (scenarios or parameter draws) in one compiled call.

    **Arguments:** as `simulate`, where the arguments mapped by `in_axes` (in the order params,
    initial, drivers, graph, forcing; default: params and forcing) carry a leading ensemble axis S.

    **Returns:** `(final_state, trajectory)` with a leading axis S.
    """

    def one(params, initial, drivers, graph, forcing):
        return _simulate(params, initial, drivers, graph, forcing, record_states)

    return eqx.filter_vmap(one, in_axes=in_axes)(params, initial, drivers, graph, forcing)


def stack(trees: list) -> object:
    """Stack a list of pytrees of equal structure along a new leading axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)
