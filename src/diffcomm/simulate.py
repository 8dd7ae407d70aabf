"""Run the model over years (`lax.scan`), over regions (`vmap` inside `step`) and ensembles.

`simulate` is compiled once per shape with `eqx.filter_jit`; `simulate_ensemble` adds a second
`vmap` over scenarios or parameter draws so that a whole ensemble is one compiled call. The
functions at the end start a simulation from observed data: the state in the data's first
year, and a restart of knowledge from the counts observed at a forecast origin.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .effects import Effects, with_region_effects
from .inputs import Drivers, Forcing, Graph, Levers
from .model import init_state, step
from .observation import Observations, knowledge_from_patents
from .params import Params
from .state import Flows, RegionState, State

if TYPE_CHECKING:  # the data set is only read here; data/ builds it
    from .data import Dataset

NESTED_CHECKPOINT_YEARS = 64  # from this many years a checkpointed simulation keeps O(sqrt(T)) states


class Trajectory(eqx.Module):
    """What a simulation records, with leading axes (T, R).

    `observations` is always there; `regions` and `flows` only with `record_states=True`
    (they cost memory: 11 (R, K) arrays and 3 (R,) arrays a year).
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
    drivers: Drivers | None = None,
    dtype=float,
) -> Forcing:
    """Forcing for `num_years` years; levers and shocks broadcast to (T, R); `drivers` (leading
    axes (T, R)), where they change from year to year. Without `levers` the forcing holds none
    (`Forcing.levers` is None: no policy), rather than six (T, R) arrays of zeros: at R = 1e5,
    T = 200 in single precision those would be 480 MB of a gradient's 2 GB. `dtype`: that of the
    shocks where none are given (the parameters' precision: `Params.dtype`)."""
    shape = (num_years, num_regions)
    if levers is not None:
        levers = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(jnp.asarray(x, dtype=float), shape), levers)
    shock = jnp.zeros(shape, dtype) if shock is None else jnp.broadcast_to(jnp.asarray(shock, dtype=float), shape)
    return Forcing(levers=levers, shock=shock, drivers=drivers)


def _simulate(
    params: Params,
    initial: State,
    drivers: Drivers,
    graph: Graph,
    forcing: Forcing,
    record_states: bool,
    checkpoint: bool,
) -> tuple[State, Trajectory]:
    p = params.natural()

    def one_year(state: State, inputs):
        levers, shock, year_drivers = inputs
        new_state, observations, flows = step(p, state, drivers if year_drivers is None else year_drivers, graph, levers,
                                              shock)
        if record_states:
            return new_state, (observations, new_state.regions, flows)
        return new_state, (observations, None, None)

    inputs = (forcing.levers, forcing.shock, forcing.drivers)
    if not checkpoint:
        final, (observations, regions, flows) = jax.lax.scan(one_year, initial, inputs)
    else:  # recompute each year's internals on the backward pass instead of storing them
        final, (observations, regions, flows) = _checkpointed_scan(jax.checkpoint(one_year), initial, inputs)
    return final, Trajectory(observations, regions, flows)


def _checkpointed_scan(body, initial: State, inputs):
    """`lax.scan(body, initial, inputs)` for a checkpointed `body`. Up to `NESTED_CHECKPOINT_YEARS`
    years the backward pass keeps each year's state; beyond, the years run in blocks of about
    sqrt(T), each block checkpointed too, so that it keeps the state at each block's start and,
    while it differentiates one block, that block's years: O(sqrt(T)) states instead of O(T), for
    one more forward pass."""
    num_years = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    if num_years < NESTED_CHECKPOINT_YEARS:
        return jax.lax.scan(body, initial, inputs)
    size = math.isqrt(num_years)
    blocks = num_years // size

    @jax.checkpoint
    def block(state, block_inputs):
        return jax.lax.scan(body, state, block_inputs)

    head = jax.tree_util.tree_map(lambda x: x[: blocks * size].reshape(blocks, size, *x.shape[1:]), inputs)
    state, outputs = jax.lax.scan(block, initial, head)
    outputs = jax.tree_util.tree_map(lambda y: y.reshape(blocks * size, *y.shape[2:]), outputs)
    if blocks * size == num_years:
        return state, outputs
    state, rest = jax.lax.scan(body, state, jax.tree_util.tree_map(lambda x: x[blocks * size :], inputs))
    return state, jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), outputs, rest)


_simulate_jit = eqx.filter_jit(_simulate)


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
    - `forcing`: levers, shocks and (optionally) the drivers of each year, leading axes (T, R); T is
      the number of years simulated. Drivers in the forcing replace `drivers`.
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
    checkpoint: bool = False,
) -> tuple[State, Trajectory]:
    """Simulate an ensemble (scenarios or parameter draws) in one compiled call.

    **Arguments:** as `simulate`, where the arguments mapped by `in_axes` (in the order params,
    initial, drivers, graph, forcing; default: params and forcing) carry a leading ensemble axis S.

    **Returns:** `(final_state, trajectory)` with a leading axis S.
    """

    def one(params, initial, drivers, graph, forcing):
        return _simulate(params, initial, drivers, graph, forcing, record_states, checkpoint)

    return eqx.filter_vmap(one, in_axes=in_axes)(params, initial, drivers, graph, forcing)


def stack(trees: list) -> object:
    """Stack a list of pytrees of equal structure along a new leading axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


# --------------------------------------------------------------------------------------------
# Simulations that start from observed data
# --------------------------------------------------------------------------------------------


def first_knowledge(params: Params, data: Dataset) -> Float[Array, " r"]:
    """Each region's total knowledge in the data's first year: what its count maps to
    (`knowledge_from_patents`)."""
    return knowledge_from_patents(params.natural(), data.first_patents)


def initial_state_from_data(params: Params, data: Dataset) -> State:
    """The state in the data's first year: knowledge from the observed patent count (split
    evenly over domains), active members and internationalization from the data."""
    num_domains = params.num_domains
    ones = jnp.ones((1, num_domains), params.dtype)
    knowledge = first_knowledge(params, data)[:, None] / num_domains * ones
    active = data.initial_active[:, None] / num_domains * ones
    internationalization = jnp.clip(data.initial_internationalization, 0.01, 0.99)[:, None] * ones
    ties = {} if data.initial_ties is None else dict(ties=data.initial_ties)
    return init_state(params, data.graph, active=active, knowledge=knowledge, internationalization=internationalization,
                      **ties)


def initial_state(params: Params, data: Dataset, drivers: Drivers, *, checkpoint: bool = False) -> State:
    """The state a simulation of the data starts from: `initial_state_from_data`, or, with
    `data.spin_up_years`, the state after that many years under `drivers` (no policy, no shock)
    with knowledge set back to the first year's counts: members, overlap and internationalization
    near what the drivers sustain, knowledge at its observed level."""
    state = initial_state_from_data(params, data)
    if not data.spin_up_years:
        return state
    forcing = make_forcing(data.spin_up_years, data.num_regions, dtype=params.dtype)
    state, _ = simulate(params, state, drivers, data.graph, forcing, record_states=False, checkpoint=checkpoint)
    return restart_knowledge(params, state, data.first_patents)


def region_drivers(params: Params, data: Dataset, effects: Effects | None = None) -> Drivers:
    """The data's drivers, with the latent region effects added where `effects` are given."""
    return data.drivers if effects is None else with_region_effects(params.natural(), data.drivers, effects)


def simulate_from_data(params: Params, data: Dataset, num_years: int, *, effects: Effects | None = None,
                       checkpoint: bool = False) -> tuple[State, Observations]:
    """Simulate `num_years` years after the data's first year, with no policy and no shock.

    `effects`: latent region effects added to the drivers (`effects.py`); their national part is
    not applied here: expected patents are at the first year's national level (multiply by
    `exp(national_effects(...))` for the years' own).

    **Returns:** the final state and the observations of every year, leading axes (T, R).
    """
    forcing = make_forcing(num_years, data.num_regions, dtype=params.dtype)
    drivers = region_drivers(params, data, effects)
    final, traj = simulate(params, initial_state(params, data, drivers, checkpoint=checkpoint), drivers, data.graph, forcing,
                           record_states=False, checkpoint=checkpoint)
    return final, traj.observations


def restart_knowledge(params: Params, state: State, counts: Float[Array, " r"],
                      national: Float[Array, ""] | float = 0.0) -> State:
    """The state with knowledge set from observed patent counts (the observation model inverted,
    at the national effect `national` of the counts' year), kept where a count is missing (NaN);
    its split over domains is the simulated one."""
    knowledge = state.regions.knowledge
    observed = jnp.isfinite(counts)
    level = knowledge_from_patents(params.natural(), jnp.where(observed, counts, 0.0), national)  # no NaN in a gradient
    share = knowledge / jnp.sum(knowledge, axis=-1, keepdims=True)
    new = jnp.where(observed[:, None], level[:, None] * share, knowledge)
    return eqx.tree_at(lambda s: s.regions.knowledge, state, new)
