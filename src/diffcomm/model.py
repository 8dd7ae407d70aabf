"""The co-evolution model: the state at the first year and one year of dynamics.

Every concept of the model (see ``docs/model.md``) is a named field or a named function: the
parameters in ``params.py``, drivers and levers in ``inputs.py``, the state in ``state.py``, the
observation model in ``observation.py``, and the mechanisms here. The per-region update
:func:`region_step` is written for one region; :func:`step` maps it over regions with
``jax.vmap``, adds the cross-local ties (gathers and segment sums over the edges, ``edges.py``) and updates the
international communities as a reduction over regions.

Stocks stay positive and shares stay inside (0, 1) by construction, never by clipping: outflows
are fractions ``1 - exp(-rate)`` of a stock, and shares move by convex combinations of their
current value and a target inside (0, 1).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .edges import sum_rows, take_rows
from .inputs import INITIAL_TIE, Drivers, Graph, Levers
from .observation import Observations, observe
from .params import NaturalParams, Params
from .state import Flows, RegionState, State, WorldState


def init_state(
    params: Params,
    graph: Graph,
    *,
    active: Float[Array, "r k"],
    passive: Float[Array, "r k"] | None = None,
    overlap: Float[Array, "r k"] | float = 0.1,
    knowledge: Float[Array, "r k"] | float = 10.0,
    internationalization: Float[Array, "r k"] | float = 0.3,
    development: Float[Array, " r"] | float = 1.0,
    local_connectedness: Float[Array, " r"] | float = 0.6,
    catchment_share: Float[Array, " r"] | float = 0.3,
    ties: Float[Array, " e"] | float = INITIAL_TIE,
) -> State:
    """The state at the first year. Scalars broadcast; `passive` defaults to `active`.

    **Arguments:** initial values with shapes `(R, K)` or `(R,)` as named; see `RegionState`.

    **Returns:** a `State` whose international community and frontier are consistent with the
    regions (one reduction step with no time passing).
    """
    dtype = params.dtype
    active = jnp.asarray(active, dtype=dtype)
    if active.ndim != 2:
        raise ValueError(f"active must have shape (R, K), got {active.shape}")
    num_regions, num_domains = active.shape
    if num_domains != params.num_domains:
        raise ValueError(f"active has K={num_domains} domains but params have K={params.num_domains}")

    def full(x, shape):
        return jnp.broadcast_to(jnp.asarray(x, dtype=dtype), shape)

    rk, r = (num_regions, num_domains), (num_regions,)
    regions = RegionState(
        active=active,
        passive=active if passive is None else full(passive, rk),
        overlap=full(overlap, rk),
        knowledge=full(knowledge, rk),
        internationalization=full(internationalization, rk),
        development=full(development, r),
        disconnection=1.0 - full(local_connectedness, r),
        catchment_share=full(catchment_share, r),
    )
    p = params.natural()
    members = international_members(p, regions)
    world = WorldState(
        international_members=members,
        frontier=p.frontier_base + p.frontier_contribution * _contributed_knowledge(regions, members),
        ties=full(ties, graph.source.shape),
    )
    return State(regions, world)


# --------------------------------------------------------------------------------------------
# Mechanisms, one region (all domains at once)
# --------------------------------------------------------------------------------------------


def _leave(rate: Array) -> Array:
    """Fraction of a stock that leaves in a year at hazard `rate` >= 0; always in [0, 1)."""
    return -jnp.expm1(-rate)


def effective_amenities(p: NaturalParams, s: RegionState, d: Drivers) -> Array:
    """Amenities, raised by regional development (Y feeds amenities)."""
    return d.amenities + p.development_amenity_weight * jnp.log(s.development)


def inflow_of_new_members(p: NaturalParams, s: RegionState, d: Drivers, shock: Array) -> Array:
    """New passive members a year from the four driving forces (K,); a shock stops migration.
    `d.attraction` is the region's pull that the observed drivers miss (0 unless calibrated)."""
    log_inflow = (
        p.inflow_bias
        + p.educating_weight * d.educating
        + p.migrating_weight * d.migrating * (1.0 + d.openness)
        + p.connecting_weight * d.connecting
        + p.specializing_weight * d.specializing
        + p.amenity_weight * effective_amenities(p, s, d)
        + p.development_inflow_weight * jnp.log(s.development)
        + d.attraction
    )
    return jnp.exp(log_inflow) * (1.0 - p.shock_on_migration * shock)


def activation_rate(p: NaturalParams, s: RegionState, d: Drivers) -> Array:
    """Yearly hazard of a passive member becoming active (K,): middleground, policy, anchors, F."""
    logit = (
        p.activation_bias
        + p.middleground_weight * d.middleground
        + p.policy_weight * d.place_policy
        + p.anchor_weight * d.anchors
        + p.internationalization_activation_weight * s.internationalization
    )
    return p.activation_max * jax.nn.sigmoid(logit)


def critical_mass_switch(p: NaturalParams, log_active: Array) -> Array:
    """Near 0 below the critical mass A*, near 1 above it (K,); takes log A."""
    return jax.nn.sigmoid(p.critical_mass_steepness * (log_active - jnp.log(p.critical_mass)))


def reproduction(p: NaturalParams, s: RegionState, log_active: Array) -> Array:
    """Self-sustaining growth of active members, fed by internationalization (K,).

    Only above the critical mass; it saturates at the carrying capacity so that communities stay
    finite (the capacity is an addition to version 1 of the equations).
    """
    per_member = p.reproduction_rate * s.internationalization * critical_mass_switch(p, log_active)
    return per_member * s.active / (1.0 + s.active / p.carrying_capacity)


def attrition_rate(p: NaturalParams, s: RegionState, d: Drivers) -> Array:
    """Yearly hazard of losing an active member; amenities cut it."""
    return p.active_attrition * jnp.exp(-p.amenity_weight * effective_amenities(p, s, d))


def overlap_formation(p: NaturalParams, s: RegionState, d: Drivers, members: Array, shock: Array) -> Array:
    """Share of non-overlapping members joining the international community this year (K,).

    Trade fairs and associations (connecting) and the middleground drive it; a shock to fairs
    stops new overlap but leaves the existing stock alone.
    """
    logit = (
        p.overlap_bias
        + p.connecting_weight * d.connecting
        + p.middleground_overlap_weight * d.middleground
        + p.international_pull_weight * jnp.log(members / p.international_base)
    )
    return p.overlap_rate * jax.nn.sigmoid(logit) * (1.0 - p.shock_on_fairs * shock)


def cognitive_distance(log_source: Array, log_learner: Array) -> Array:
    """d = log(G_source / G_learner): how far a source's knowledge lies beyond the learner's."""
    return log_source - log_learner


def absorption(p: NaturalParams, distance: Array) -> Array:
    """Inverted U in cognitive distance: 0 at d <= 0, largest (1) at d*, falling beyond."""
    x = jax.nn.relu(distance) / p.best_distance
    return x * jnp.exp(1.0 - x)


def log_lock_in(p: NaturalParams, s: RegionState, d: Drivers) -> Array:
    """log (o + X)^nu: low openness and low overlap damp learning returns (K,)."""
    return p.lock_in_exponent * jnp.log(d.openness + s.overlap)


def local_buzz(p: NaturalParams, s: RegionState, d: Drivers, log_active: Array | None = None) -> Array:
    """Knowledge from local buzz, beta_b A^alpha exp(w_sb s + b) (o + X)^nu (K,).

    Concave in active members, rising with specialization, damped by lock-in; `b` is the region's
    buzz quality (`Drivers.buzz_quality`, 0 unless a calibration estimates it). Computed as one
    exponential of a sum of logs (one transcendental instead of four).
    """
    log_active = jnp.log(s.active) if log_active is None else log_active
    return p.buzz_scale * jnp.exp(
        p.buzz_elasticity * log_active + p.buzz_specialization_weight * d.specializing + d.buzz_quality
        + log_lock_in(p, s, d)
    )


def frontier_pipeline(p: NaturalParams, s: RegionState, frontier: Array, log_knowledge: Array) -> Array:
    """Knowledge from the international frontier through overlapping members (K,).

    The reach of the pipeline, `1 - exp(-beta_p X A)`, is about `beta_p X A` for small
    communities (version 1) but saturates, so no community learns more than its own stock from
    the frontier in a year however large it is; without this the frontier and local knowledge
    could feed each other without bound.
    """
    gain = absorption(p, cognitive_distance(jnp.log(frontier), log_knowledge))
    return _leave(p.pipeline_scale * s.overlap * s.active) * gain * s.knowledge


def internationalization_target(p: NaturalParams, s: RegionState, d: Drivers, shock: Array, log_active: Array) -> Array:
    """Yearly gain of internationalization (K,); a shock stops part of it."""
    logit = (
        p.export_bias
        + p.export_overlap_weight * s.overlap
        + p.export_community_weight * log_active
        + p.export_mne_weight * d.mne_presence
    )
    return p.export_rate * jax.nn.sigmoid(logit) * (1.0 - p.shock_on_exports * shock)


def disconnection_update(p: NaturalParams, s: RegionState, d: Drivers) -> Array:
    """Orchestration erodes local connectedness Lc; spawning and place-based policy renew it.

    Lc' = Lc exp(-erosion) + leave(renewal) (1 - Lc), written for the stored complement
    1 - Lc' = (1 - Lc) exp(-renewal) + Lc leave(erosion): both terms are >= 0, so 1 - Lc stays a
    positive number even where Lc comes within float32's resolution of 1.
    """
    mean_f = jnp.mean(s.internationalization)
    erosion = p.orchestration_erosion * d.mne_presence * (1.0 - d.spawning_share) * mean_f
    renewal = (
        p.spawning_renewal * d.mne_presence * d.spawning_share * jnp.mean(p.clockspeed)
        + p.policy_renewal * jax.nn.softplus(d.place_policy)
    )
    return s.disconnection * jnp.exp(-renewal) + s.local_connectedness * _leave(erosion)


def balance(p: NaturalParams, s: RegionState, d: Drivers, members: Array) -> tuple[RegionState, Array]:
    """One region's state in balance at its active members, and the inflow offset that holds it
    there (K,), from the model's own yearly flows  with no shock:

    - overlap X* = new / (delta_X + new) and internationalization F* = gain / delta_F, the fixed
      points of their updates;
    - active members lose A leave(attrition) a year and gain reproduction; activation must make
      up the difference (at least 1% of the loss: a community above its critical mass that grows
      by itself keeps growing), which takes P* = activation / (leave(a + delta_P) a / (a + delta_P))
      passive members, fed by an inflow of P* leave(a + delta_P);
    - the offset is log of that inflow less log of the inflow the drivers give.
    """
    zero = jnp.zeros(())
    new_overlap = overlap_formation(p, s, d, members, zero)
    s = dataclasses.replace(s, overlap=new_overlap / (p.overlap_decay + new_overlap))
    log_active = jnp.log(s.active)
    s = dataclasses.replace(s, internationalization=internationalization_target(p, s, d, zero, log_active) / p.export_decay)
    lost = s.active * -jnp.expm1(-attrition_rate(p, s, d))
    activation = jnp.maximum(lost - reproduction(p, s, log_active), 0.01 * lost)
    rate = activation_rate(p, s, d)
    leaving = -jnp.expm1(-(rate + p.passive_attrition))
    passive = activation * (rate + p.passive_attrition) / (leaving * rate)
    offset = jnp.log(passive * leaving) - jnp.log(inflow_of_new_members(p, s, d, zero))
    return dataclasses.replace(s, passive=passive), offset


def region_step(
    p: NaturalParams,
    s: RegionState,
    d: Drivers,
    shock: Float[Array, ""],
    tie_knowledge: Float[Array, "k"],
    world: WorldState,
) -> tuple[RegionState, Flows]:
    """One year for one region.

    **Arguments:**

    - `p`: natural-scale parameters.
    - `s`: this region's state; `d`: its drivers (levers already applied).
    - `shock`: disruption xi in [0, 1] this year.
    - `tie_knowledge`: knowledge reaching the region through cross-local ties (K,).
    - `world`: international communities and frontier at the start of the year.

    **Returns:** the region's state a year later, and its flows.
    """
    log_active, log_knowledge = jnp.log(s.active), jnp.log(s.knowledge)
    inflow = inflow_of_new_members(p, s, d, shock)
    act_rate = activation_rate(p, s, d)
    leaving_passive = _leave(act_rate + p.passive_attrition) * s.passive
    activation = leaving_passive * act_rate / (act_rate + p.passive_attrition)
    grown = reproduction(p, s, log_active)
    active = s.active * jnp.exp(-attrition_rate(p, s, d)) + activation + grown
    passive = s.passive - leaving_passive + inflow

    new_overlap = overlap_formation(p, s, d, world.international_members, shock)
    overlap = s.overlap * (1.0 - p.overlap_decay) + (1.0 - s.overlap) * new_overlap

    buzz = local_buzz(p, s, d, log_active)
    pipeline = frontier_pipeline(p, s, world.frontier, log_knowledge) + p.tie_scale * tie_knowledge
    # pipelines make buzz more productive; pipe/(G + pipe) keeps the boost below 1 + eta
    knowledge = (
        s.knowledge * (1.0 - p.ubiquitification)
        + buzz * (1.0 + p.complementarity * pipeline / (s.knowledge + pipeline))
        + pipeline
    )

    internationalization = s.internationalization * (1.0 - p.export_decay) + internationalization_target(
        p, s, d, shock, log_active
    )
    development = (
        s.development * (1.0 - p.development_decay)
        + p.development_decay
        + p.development_export_gain * jnp.sum(s.internationalization)
        + p.development_knowledge_gain * jnp.log1p(jnp.sum(s.knowledge))
    )
    disconnection = disconnection_update(p, s, d)
    catchment_share = s.catchment_share + p.catchment_rate * (
        (1.0 - disconnection) * p.catchment_ceiling - s.catchment_share
    )
    new = RegionState(
        active=active,
        passive=passive,
        overlap=overlap,
        knowledge=knowledge,
        internationalization=internationalization,
        development=development,
        disconnection=disconnection,
        catchment_share=catchment_share,
    )
    return new, Flows(inflow, activation, grown, new_overlap, buzz, pipeline)


# --------------------------------------------------------------------------------------------
# Cross-local ties and the international communities (reductions over regions)
# --------------------------------------------------------------------------------------------


def tie_knowledge(p: NaturalParams, knowledge: Float[Array, "r k"], graph: Graph, ties: Array) -> Array:
    """Knowledge reaching each region through its incoming ties, (R, K), a segment sum over the edges.

    Per edge: W absorption(log G_s - log G_r) G_s, written as W x exp(1 - x + log G_s) with
    x = relu(log G_s - log G_r) / d*, so that an edge costs one exponential.
    """
    log_knowledge = jnp.log(knowledge)
    log_sender = take_rows(log_knowledge, graph.source)
    x = jax.nn.relu(cognitive_distance(log_sender, take_rows(log_knowledge, graph.target))) / p.best_distance
    flow = ties[:, None] * x * jnp.exp(1.0 - x + log_sender)
    return sum_rows(flow, graph.target, knowledge.shape[0])


def tie_strength(graph: Graph, ties: Float[Array, " e"], num_regions: int) -> Float[Array, " r"]:
    """The summed strength of each region's cross-local ties, incoming and outgoing."""
    return sum_rows(ties, graph.source, num_regions) + sum_rows(ties, graph.target, num_regions)


def international_members(p: NaturalParams, regions: RegionState) -> Float[Array, "k"]:
    """N_k = N0_k + sum_r X_rk A_rk: the international community of each domain."""
    return p.international_base + jnp.sum(regions.overlap * regions.active, axis=0)


def _contributed_knowledge(regions: RegionState, members: Array) -> Array:
    """Knowledge of overlapping members, averaged over the international community (K,)."""
    return jnp.sum(regions.overlap * regions.active * regions.knowledge, axis=0) / members


def world_step(p: NaturalParams, world: WorldState, regions: RegionState, graph: Graph) -> WorldState:
    """The international communities and ties after all regions have stepped.

    The frontier relaxes toward what is made abroad (I0) plus the contributions of overlapping
    members, which keeps it finite (version 1 let it grow without bound).
    """
    members = international_members(p, regions)
    target = p.frontier_base + p.frontier_contribution * _contributed_knowledge(regions, members)
    frontier = world.frontier + p.frontier_rate * (target - world.frontier)
    mean_overlap = jnp.mean(regions.overlap, axis=-1)
    formation = p.tie_formation * graph.affinity * take_rows(mean_overlap, graph.source) * take_rows(mean_overlap, graph.target)
    ties = world.ties * (1.0 - p.tie_decay) + (1.0 - world.ties) * formation
    return WorldState(members, frontier, ties)


def step(
    p: NaturalParams,
    state: State,
    drivers: Drivers,
    graph: Graph,
    levers: Levers | None,
    shock: Float[Array, " r"],
) -> tuple[State, Observations, Flows]:
    """One year for all regions: a pure function of the state and this year's inputs.

    **Arguments:** natural parameters, the state, drivers (leading axis R), the tie graph,
    this year's levers (each (R,); None: no policy) and shocks (R,).

    **Returns:** the next state, observations of that state, and the year's flows (all (R, ...)).
    """
    regions = state.regions
    from_ties = tie_knowledge(p, regions.knowledge, graph, state.world.ties)
    effective = drivers if levers is None else jax.vmap(Levers.apply)(levers, drivers)
    new_regions, flows = jax.vmap(region_step, in_axes=(None, 0, 0, 0, 0, None))(
        p, regions, effective, shock, from_ties, state.world
    )
    world = world_step(p, state.world, new_regions, graph)
    strength = tie_strength(graph, world.ties, regions.active.shape[0])
    observations = jax.vmap(observe, in_axes=(None, 0, 0))(p, new_regions, strength)
    return State(new_regions, world), observations, flows
