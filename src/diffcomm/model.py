"""The co-evolution model: parameters, drivers, state, and one year of dynamics.

Every concept of the model (see ``docs/model.md``) is a named field or a named function here.
The per-region update :func:`region_step` is written for one region; :func:`step` maps it over
regions with ``jax.vmap``, adds the cross-local ties with ``jax.ops.segment_sum`` and updates the
international communities as a reduction over regions.

Stocks stay positive and shares stay inside (0, 1) by construction, never by clipping: outflows
are fractions ``1 - exp(-rate)`` of a stock, and shares move by convex combinations of their
current value and a target inside (0, 1).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

_REAL, _POSITIVE, _UNIT = "real", "positive", "unit"


def _parameter(constraint: str, default: float, doc: str, *, per_domain: bool = False):
    """A model parameter: stored unconstrained, read through ``constraint``."""
    return eqx.field(
        metadata=dict(constraint=constraint, default=default, doc=doc, per_domain=per_domain)
    )


def _to_natural(constraint: str, raw: Array) -> Array:
    if constraint == _POSITIVE:
        return jax.nn.softplus(raw)
    if constraint == _UNIT:
        return jax.nn.sigmoid(raw)
    return raw


def _to_raw(constraint: str, value: Array) -> Array:
    if constraint == _POSITIVE:
        return value + jnp.log(-jnp.expm1(-value))  # inverse softplus
    if constraint == _UNIT:
        return jnp.log(value) - jnp.log1p(-value)  # logit
    return value


def _check_natural(name: str, constraint: str, value) -> None:
    if isinstance(value, jax.core.Tracer):  # traced values (e.g. under grad) cannot be checked here
        return
    v = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"parameter {name!r} must be finite, got {value!r}")
    if constraint == _POSITIVE and np.any(v <= 0):
        raise ValueError(f"parameter {name!r} must be > 0, got {value!r}")
    if constraint == _UNIT and np.any((v <= 0) | (v >= 1)):
        raise ValueError(f"parameter {name!r} must lie strictly inside (0, 1), got {value!r}")


class Params(eqx.Module):
    """All parameters of the model, stored on an unconstrained scale.

    Read the values a user means (natural scale) with :meth:`natural`; build from natural values
    with :meth:`from_natural`. Scalars have shape ``()``; per-domain parameters have shape ``(K,)``.
    Symbols refer to ``docs/model.md``.
    """

    # -- inflow of new members: the four driving forces (B&C section 4) --------------------
    inflow_bias: Float[Array, ""] = _parameter(_REAL, -0.5, "b_in: log inflow of a region at mean drivers")
    connecting_weight: Float[Array, ""] = _parameter(_REAL, 0.5, "w_c: driver weight of connecting")
    educating_weight: Float[Array, ""] = _parameter(_REAL, 0.5, "w_e: driver weight of educating/training")
    migrating_weight: Float[Array, ""] = _parameter(_REAL, 0.5, "w_m: driver weight of migrating (scaled by 1+openness)")
    specializing_weight: Float[Array, ""] = _parameter(_REAL, 0.5, "w_s: driver weight of clustering/specializing")
    amenity_weight: Float[Array, ""] = _parameter(_REAL, 0.3, "w_q: amenities raise inflow and cut attrition")
    development_inflow_weight: Float[Array, ""] = _parameter(_REAL, 0.3, "w_Y: regional development feeds inflow")
    development_amenity_weight: Float[Array, ""] = _parameter(_REAL, 0.3, "development feeds amenities")
    # -- activation P -> A: middleground, place-based policy, anchors (B&C section 5) ------
    activation_max: Float[Array, ""] = _parameter(_UNIT, 0.3, "a-bar: largest yearly activation rate")
    activation_bias: Float[Array, ""] = _parameter(_REAL, -1.5, "b_a: activation logit at mean conditions")
    middleground_weight: Float[Array, ""] = _parameter(_REAL, 0.8, "w_g: middleground raises activation")
    policy_weight: Float[Array, ""] = _parameter(_REAL, 0.5, "w_p: place-based policy raises activation")
    anchor_weight: Float[Array, ""] = _parameter(_REAL, 0.5, "w_l: leaders and anchor firms raise activation")
    internationalization_activation_weight: Float[Array, ""] = _parameter(_REAL, 0.5, "w_F: internationalization raises activation")
    # -- reproduction, critical mass, attrition ---------------------------------------------
    reproduction_rate: Float[Array, ""] = _parameter(_POSITIVE, 0.2, "rho: self-sustaining feedback per unit of F")
    critical_mass_steepness: Float[Array, ""] = _parameter(_POSITIVE, 4.0, "h: sharpness of the critical-mass switch")
    critical_mass: Float[Array, "k"] = _parameter(_POSITIVE, 10.0, "A*: critical mass of active members", per_domain=True)
    carrying_capacity: Float[Array, "k"] = _parameter(_POSITIVE, 30.0, "A_cap: size at which reproduction halves", per_domain=True)
    active_attrition: Float[Array, ""] = _parameter(_POSITIVE, 0.1, "delta_A: attrition rate of active members")
    passive_attrition: Float[Array, ""] = _parameter(_POSITIVE, 0.1, "delta_P: attrition rate of passive members")
    # -- local-international overlap (B&C sections 2, 5) ------------------------------------
    overlap_rate: Float[Array, ""] = _parameter(_UNIT, 0.2, "lambda_X: largest yearly share of non-overlap that joins")
    overlap_bias: Float[Array, ""] = _parameter(_REAL, -2.0, "b_X: overlap-formation logit at mean drivers")
    middleground_overlap_weight: Float[Array, ""] = _parameter(_REAL, 0.5, "w_gX: middleground merges local and global buzz")
    international_pull_weight: Float[Array, ""] = _parameter(_REAL, 0.3, "w_N: a growing international community draws overlap (log N/N0)")
    overlap_decay: Float[Array, ""] = _parameter(_UNIT, 0.05, "delta_X: yearly loss of overlap")
    # -- disruption shocks (L,M&S) -----------------------------------------------------------
    shock_on_migration: Float[Array, ""] = _parameter(_UNIT, 0.8, "tau_m: share of inflow a full shock stops")
    shock_on_fairs: Float[Array, ""] = _parameter(_UNIT, 0.8, "tau_f: share of new overlap a full shock stops")
    shock_on_exports: Float[Array, ""] = _parameter(_UNIT, 0.6, "tau_F: share of new internationalization a full shock stops")
    # -- localized learning (M&M) ------------------------------------------------------------
    best_distance: Float[Array, ""] = _parameter(_POSITIVE, 1.0, "d*: cognitive distance of largest absorption")
    buzz_scale: Float[Array, ""] = _parameter(_POSITIVE, 0.3, "beta_b: productivity of local buzz")
    buzz_elasticity: Float[Array, ""] = _parameter(_UNIT, 0.5, "alpha: buzz is concave in active members")
    buzz_specialization_weight: Float[Array, ""] = _parameter(_REAL, 0.3, "w_sb: buzz rises with specialization")
    lock_in_exponent: Float[Array, ""] = _parameter(_POSITIVE, 0.5, "nu: low openness and overlap damp learning")
    pipeline_scale: Float[Array, ""] = _parameter(_POSITIVE, 0.01, "beta_p: learning from the international frontier")
    tie_scale: Float[Array, ""] = _parameter(_POSITIVE, 0.02, "beta_W: learning through cross-local ties")
    complementarity: Float[Array, ""] = _parameter(_POSITIVE, 1.0, "eta: pipelines make buzz more productive")
    ubiquitification: Float[Array, ""] = _parameter(_UNIT, 0.1, "delta_G: knowledge decays toward the ubiquitous")
    # -- internationalization ----------------------------------------------------------------
    export_rate: Float[Array, ""] = _parameter(_POSITIVE, 0.2, "lambda_F: largest yearly gain of internationalization")
    export_bias: Float[Array, ""] = _parameter(_REAL, -1.0, "b_F: internationalization logit at mean conditions")
    export_overlap_weight: Float[Array, ""] = _parameter(_REAL, 2.0, "w_XF: overlap drives internationalization")
    export_community_weight: Float[Array, ""] = _parameter(_REAL, 0.3, "w_AF: community size drives internationalization")
    export_mne_weight: Float[Array, ""] = _parameter(_REAL, 0.5, "w_M: MNE presence drives internationalization")
    export_decay: Float[Array, ""] = _parameter(_UNIT, 0.2, "delta_F: yearly decay of internationalization")
    # -- regional development ----------------------------------------------------------------
    development_export_gain: Float[Array, ""] = _parameter(_POSITIVE, 0.02, "gamma_F: development from internationalization")
    development_knowledge_gain: Float[Array, ""] = _parameter(_POSITIVE, 0.01, "gamma_G: development from knowledge")
    development_decay: Float[Array, ""] = _parameter(_UNIT, 0.1, "delta_Y: pull of development back to 1")
    # -- MNE strategy and local connectedness (L,M&S) ---------------------------------------
    orchestration_erosion: Float[Array, ""] = _parameter(_POSITIVE, 0.15, "omega_o: global orchestration erodes Lc")
    spawning_renewal: Float[Array, ""] = _parameter(_POSITIVE, 0.1, "omega_s: local spawning renews Lc")
    policy_renewal: Float[Array, ""] = _parameter(_POSITIVE, 0.02, "omega_p: place-based policy renews Lc")
    clockspeed: Float[Array, "k"] = _parameter(_POSITIVE, 1.0, "kappa: industry clockspeed", per_domain=True)
    catchment_rate: Float[Array, ""] = _parameter(_UNIT, 0.2, "lambda_S: speed at which the catchment share follows Lc")
    catchment_ceiling: Float[Array, ""] = _parameter(_UNIT, 0.5, "S-bar: catchment share at full connectedness")
    # -- international communities and cross-local ties ------------------------------------
    international_base: Float[Array, "k"] = _parameter(_POSITIVE, 100.0, "N0: members abroad outside the modelled regions", per_domain=True)
    frontier_base: Float[Array, "k"] = _parameter(_POSITIVE, 40.0, "I0: frontier knowledge made outside the modelled regions", per_domain=True)
    frontier_contribution: Float[Array, ""] = _parameter(_UNIT, 0.5, "b_I: weight of overlapping members' knowledge in the frontier")
    frontier_rate: Float[Array, ""] = _parameter(_UNIT, 0.1, "delta_I: speed at which the frontier moves")
    tie_formation: Float[Array, ""] = _parameter(_UNIT, 0.1, "lambda_W: tie formation at full overlap and affinity")
    tie_decay: Float[Array, ""] = _parameter(_UNIT, 0.1, "delta_W: yearly decay of ties")
    # -- observation model (MODEL section 4) ---------------------------------------------------
    patents_intercept: Float[Array, ""] = _parameter(_REAL, 0.0, "theta_0: log patents at unit knowledge")
    patents_knowledge_elasticity: Float[Array, ""] = _parameter(_REAL, 1.0, "theta_G: elasticity of patents to knowledge")
    patents_dispersion: Float[Array, ""] = _parameter(_POSITIVE, 5.0, "negative binomial size (larger: closer to Poisson)")
    coinvention_intercept: Float[Array, ""] = _parameter(_REAL, -2.0, "theta_i0: logit share of patents with a foreign co-inventor")
    coinvention_slope: Float[Array, ""] = _parameter(_REAL, 0.5, "theta_i1: response of that share to logit overlap")
    nonlocal_intercept: Float[Array, ""] = _parameter(_REAL, 0.0, "theta_n0: logit non-local connection share")
    nonlocal_connectedness_slope: Float[Array, ""] = _parameter(_REAL, 1.0, "theta_n1: response to logit (1 - Lc)")
    nonlocal_overlap_slope: Float[Array, ""] = _parameter(_REAL, 0.5, "theta_n2: response to logit overlap")
    nonlocal_concentration: Float[Array, ""] = _parameter(_POSITIVE, 20.0, "beta-binomial concentration of connection counts")

    def __check_init__(self):
        shapes = {f.name: jnp.shape(getattr(self, f.name)) for f in dataclasses.fields(self)}
        domain_shapes = {shapes[f.name] for f in dataclasses.fields(self) if f.metadata["per_domain"]}
        if len(domain_shapes) != 1 or len(next(iter(domain_shapes))) != 1:
            raise ValueError(f"per-domain parameters must all have one shape (K,), got {domain_shapes}")
        for f in dataclasses.fields(self):
            if not f.metadata["per_domain"] and shapes[f.name] != ():
                raise ValueError(f"parameter {f.name!r} must be a scalar, got shape {shapes[f.name]}")

    @property
    def num_domains(self) -> int:
        return jnp.shape(self.critical_mass)[-1]

    @classmethod
    def from_natural(cls, num_domains: int = 3, **values) -> "Params":
        """Build parameters from natural-scale values; unnamed ones take their defaults.

        **Arguments:**

        - `num_domains`: K, the number of industry or technology domains.
        - `values`: natural-scale values by name; per-domain ones may be a scalar or length K.

        **Returns:** a `Params`.

        ```python
        params = Params.from_natural(3, educating_weight=1.0, critical_mass=[10.0, 20.0, 5.0])
        ```
        """
        if not isinstance(num_domains, int) or num_domains < 1:
            raise ValueError(f"num_domains must be a positive int, got {num_domains!r}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; known: {sorted(known)}")
        raw = {}
        for name, f in known.items():
            value = values.get(name, f.metadata["default"])
            _check_natural(name, f.metadata["constraint"], value)
            value = jnp.asarray(value, dtype=float)
            if f.metadata["per_domain"]:
                if value.ndim == 0:
                    value = jnp.full((num_domains,), value)
                elif value.shape != (num_domains,):
                    raise ValueError(
                        f"parameter {name!r} must be a scalar or have length {num_domains}, got shape {value.shape}"
                    )
            raw[name] = _to_raw(f.metadata["constraint"], value)
        return cls(**raw)

    def natural(self) -> "NaturalParams":
        """The parameters on their natural (constrained) scale, as a named tuple of arrays."""
        return NaturalParams(
            **{f.name: _to_natural(f.metadata["constraint"], getattr(self, f.name)) for f in dataclasses.fields(self)}
        )

    @classmethod
    def describe(cls) -> dict[str, dict]:
        """Name -> constraint, default, per-domain flag and meaning, for docs and reports."""
        return {f.name: dict(f.metadata) for f in dataclasses.fields(cls)}


NaturalParams = NamedTuple(
    "NaturalParams", [(f.name, Array) for f in dataclasses.fields(Params)]
)
NaturalParams.__doc__ = "Parameters on their natural scale; same names as `Params`."


# --------------------------------------------------------------------------------------------
# Inputs: drivers, levers, graph
# --------------------------------------------------------------------------------------------


class Drivers(eqx.Module):
    """What a region brings: standardized driving forces and conditions (constant over time).

    For one region every field is a scalar except `specializing`, shape `(K,)`; batched over
    regions each gains a leading axis `R`. Standardized fields are z-scores.
    """

    connecting: Float[Array, ""]  # z-score: global connectivity, exports, scale
    educating: Float[Array, ""]  # z-score: university R&D, graduates
    migrating: Float[Array, ""]  # z-score: skilled in-migration
    specializing: Float[Array, "k"]  # z-score per domain: clustering / specialization
    amenities: Float[Array, ""]  # z-score: quality of life
    openness: Float[Array, ""]  # >= 0, about [0, 1]: openness to an influx of people and ideas
    anchors: Float[Array, ""]  # z-score: leaders and anchor firms
    middleground: Float[Array, ""]  # z-score: middleground places, events, organisations
    place_policy: Float[Array, ""]  # z-score: place-based policy and support organisations
    mne_presence: Float[Array, ""]  # >= 0: presence of multinational enterprises
    spawning_share: Float[Array, ""]  # in [0, 1]: local spawning share of MNE strategy (phi)


class Levers(eqx.Module):
    """Policy levers for one region and year, each added to the driver or condition it acts on.

    All default to zero (no policy). `spawning` raises the spawning share smoothly toward 1.
    """

    education: Float[Array, ""]  # -> educating
    openness: Float[Array, ""]  # -> openness (attraction of skilled migrants)
    middleground: Float[Array, ""]  # -> middleground and support organisations
    place_policy: Float[Array, ""]  # -> place-based policy
    connecting: Float[Array, ""]  # -> connecting (international fairs and associations)
    spawning: Float[Array, ""]  # -> spawning share (incentives for MNE local spawning)

    @classmethod
    def zeros(cls, shape: tuple[int, ...] = ()) -> "Levers":
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: jnp.zeros(shape) for n in names})

    def apply(self, drivers: Drivers) -> Drivers:
        """Drivers as the levers leave them."""
        phi = drivers.spawning_share + (1.0 - drivers.spawning_share) * -jnp.expm1(-self.spawning)
        return dataclasses.replace(
            drivers,
            educating=drivers.educating + self.education,
            openness=drivers.openness + self.openness,
            middleground=drivers.middleground + self.middleground,
            place_policy=drivers.place_policy + self.place_policy,
            connecting=drivers.connecting + self.connecting,
            spawning_share=phi,
        )


class Graph(eqx.Module):
    """Cross-local ties as a directed edge list; knowledge flows from `source` to `target`."""

    source: Int[Array, "e"]
    target: Int[Array, "e"]
    affinity: Float[Array, "e"]  # in [0, 1]: institutional and cognitive affinity of the pair

    @classmethod
    def empty(cls) -> "Graph":
        return cls(jnp.zeros((0,), int), jnp.zeros((0,), int), jnp.zeros((0,)))


class Forcing(eqx.Module):
    """What changes from year to year: policy levers and disruption shocks (leading axis T)."""

    levers: Levers  # each field (T, R)
    shock: Float[Array, "t r"]  # xi in [0, 1]


# --------------------------------------------------------------------------------------------
# State and observations
# --------------------------------------------------------------------------------------------


class RegionState(eqx.Module):
    """The state of one region (batched: leading axis R). Members in hundreds of people.

    - `active`, `passive` (K,): active and passive members of the local professional community.
    - `overlap` (K,) in (0, 1): share of active members who belong to the international community.
    - `knowledge` (K,) > 0: localized knowledge stock (capability), in frontier units.
    - `internationalization` (K,) > 0: internationalization of the region's firms (exports intensity).
    - `development` () > 0: regional development, 1 at the reference level.
    - `local_connectedness` () in (0, 1): connectedness between core city and catchment.
    - `catchment_share` () in (0, 1): share of opportunities that reach the catchment area.
    """

    active: Float[Array, "k"]
    passive: Float[Array, "k"]
    overlap: Float[Array, "k"]
    knowledge: Float[Array, "k"]
    internationalization: Float[Array, "k"]
    development: Float[Array, ""]
    local_connectedness: Float[Array, ""]
    catchment_share: Float[Array, ""]


class WorldState(eqx.Module):
    """What is shared by all regions.

    - `international_members` (K,): size of each domain's international professional community.
    - `frontier` (K,): its epistemic frontier (knowledge, same units as `RegionState.knowledge`).
    - `ties` (E,) in (0, 1): strength of each cross-local tie.
    """

    international_members: Float[Array, "k"]
    frontier: Float[Array, "k"]
    ties: Float[Array, "e"]


class State(eqx.Module):
    """The whole state: regions (leading axis R) and the world."""

    regions: RegionState
    world: WorldState


class Observations(eqx.Module):
    """What the model says data should show, per region (one year; batched: leading axes)."""

    patents: Float[Array, ""]  # expected patents granted (negative binomial mean)
    coinvention_share: Float[Array, ""]  # share of patents with a foreign co-inventor
    nonlocal_share: Float[Array, ""]  # share of connections that are non-local
    exports_intensity: Float[Array, ""]  # mean internationalization over domains
    development: Float[Array, ""]  # regional development


class Flows(eqx.Module):
    """Yearly flows of one region, kept for diagnosis and tests (K,)."""

    inflow: Float[Array, "k"]
    activation: Float[Array, "k"]
    reproduction: Float[Array, "k"]
    new_overlap: Float[Array, "k"]
    buzz: Float[Array, "k"]
    pipeline: Float[Array, "k"]


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
    ties: Float[Array, " e"] | float = 0.05,
) -> State:
    """The state at the first year. Scalars broadcast; `passive` defaults to `active`.

    **Arguments:** initial values with shapes `(R, K)` or `(R,)` as named; see `RegionState`.

    **Returns:** a `State` whose international community and frontier are consistent with the
    regions (one reduction step with no time passing).
    """
    active = jnp.asarray(active, dtype=float)
    if active.ndim != 2:
        raise ValueError(f"active must have shape (R, K), got {active.shape}")
    num_regions, num_domains = active.shape
    if num_domains != params.num_domains:
        raise ValueError(f"active has K={num_domains} domains but params have K={params.num_domains}")

    def full(x, shape):
        return jnp.broadcast_to(jnp.asarray(x, dtype=float), shape)

    rk, r = (num_regions, num_domains), (num_regions,)
    regions = RegionState(
        active=active,
        passive=active if passive is None else full(passive, rk),
        overlap=full(overlap, rk),
        knowledge=full(knowledge, rk),
        internationalization=full(internationalization, rk),
        development=full(development, r),
        local_connectedness=full(local_connectedness, r),
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
    """New passive members a year from the four driving forces (K,); a shock stops migration."""
    log_inflow = (
        p.inflow_bias
        + p.educating_weight * d.educating
        + p.migrating_weight * d.migrating * (1.0 + d.openness)
        + p.connecting_weight * d.connecting
        + p.specializing_weight * d.specializing
        + p.amenity_weight * effective_amenities(p, s, d)
        + p.development_inflow_weight * jnp.log(s.development)
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
    """Knowledge from local buzz, beta_b A^alpha exp(w_sb s) (o + X)^nu (K,).

    Concave in active members, rising with specialization, damped by lock-in. Computed as one
    exponential of a sum of logs (one transcendental instead of four).
    """
    log_active = jnp.log(s.active) if log_active is None else log_active
    return p.buzz_scale * jnp.exp(
        p.buzz_elasticity * log_active + p.buzz_specialization_weight * d.specializing + log_lock_in(p, s, d)
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


def local_connectedness_update(p: NaturalParams, s: RegionState, d: Drivers) -> Array:
    """Orchestration erodes local connectedness; spawning and place-based policy renew it."""
    mean_f = jnp.mean(s.internationalization)
    erosion = p.orchestration_erosion * d.mne_presence * (1.0 - d.spawning_share) * mean_f
    renewal = (
        p.spawning_renewal * d.mne_presence * d.spawning_share * jnp.mean(p.clockspeed)
        + p.policy_renewal * jax.nn.softplus(d.place_policy)
    )
    lc = s.local_connectedness
    return lc * jnp.exp(-erosion) + _leave(renewal) * (1.0 - lc)


def observe(p: NaturalParams, s: RegionState) -> Observations:
    """The observation model (MODEL section 4) for one region."""
    logit_overlap = jax.scipy.special.logit(jnp.mean(s.overlap))
    logit_nonlocal = jax.scipy.special.logit(1.0 - s.local_connectedness)
    return Observations(
        patents=jnp.exp(p.patents_intercept + p.patents_knowledge_elasticity * jnp.log(jnp.sum(s.knowledge))),
        coinvention_share=jax.nn.sigmoid(p.coinvention_intercept + p.coinvention_slope * logit_overlap),
        nonlocal_share=jax.nn.sigmoid(
            p.nonlocal_intercept
            + p.nonlocal_connectedness_slope * logit_nonlocal
            + p.nonlocal_overlap_slope * logit_overlap
        ),
        exports_intensity=jnp.mean(s.internationalization),
        development=s.development,
    )


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
    local_connectedness = local_connectedness_update(p, s, d)
    catchment_share = s.catchment_share + p.catchment_rate * (
        local_connectedness * p.catchment_ceiling - s.catchment_share
    )
    new = RegionState(
        active=active,
        passive=passive,
        overlap=overlap,
        knowledge=knowledge,
        internationalization=internationalization,
        development=development,
        local_connectedness=local_connectedness,
        catchment_share=catchment_share,
    )
    return new, Flows(inflow, activation, grown, new_overlap, buzz, pipeline)


# --------------------------------------------------------------------------------------------
# Cross-local ties and the international communities (reductions over regions)
# --------------------------------------------------------------------------------------------


def tie_knowledge(p: NaturalParams, knowledge: Float[Array, "r k"], graph: Graph, ties: Array) -> Array:
    """Knowledge reaching each region through its incoming ties, (R, K), by `segment_sum`.

    Per edge: W absorption(log G_s - log G_r) G_s, written as W x exp(1 - x + log G_s) with
    x = relu(log G_s - log G_r) / d*, so that an edge costs one exponential.
    """
    log_knowledge = jnp.log(knowledge)
    log_sender = log_knowledge[graph.source]
    x = jax.nn.relu(cognitive_distance(log_sender, log_knowledge[graph.target])) / p.best_distance
    flow = ties[:, None] * x * jnp.exp(1.0 - x + log_sender)
    return jax.ops.segment_sum(flow, graph.target, num_segments=knowledge.shape[0])


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
    formation = p.tie_formation * graph.affinity * mean_overlap[graph.source] * mean_overlap[graph.target]
    ties = world.ties * (1.0 - p.tie_decay) + (1.0 - world.ties) * formation
    return WorldState(members, frontier, ties)


def step(
    p: NaturalParams,
    state: State,
    drivers: Drivers,
    graph: Graph,
    levers: Levers,
    shock: Float[Array, " r"],
) -> tuple[State, Observations, Flows]:
    """One year for all regions: a pure function of the state and this year's inputs.

    **Arguments:** natural parameters, the state, drivers (leading axis R), the tie graph,
    this year's levers (each (R,)) and shocks (R,).

    **Returns:** the next state, observations of that state, and the year's flows (all (R, ...)).
    """
    regions = state.regions
    from_ties = tie_knowledge(p, regions.knowledge, graph, state.world.ties)
    effective = jax.vmap(Levers.apply)(levers, drivers)
    new_regions, flows = jax.vmap(region_step, in_axes=(None, 0, 0, 0, 0, None))(
        p, regions, effective, shock, from_ties, state.world
    )
    world = world_step(p, state.world, new_regions, graph)
    observations = jax.vmap(observe, in_axes=(None, 0))(p, new_regions)
    return State(new_regions, world), observations, flows
