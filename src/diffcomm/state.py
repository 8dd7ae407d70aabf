"""The model's state: each region's communities and the world they share (immutable Modules)."""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, Float


class RegionState(eqx.Module):
    """The state of one region (batched: leading axis R). Members in hundreds of people.

    - `active`, `passive` (K,): active and passive members of the local professional community.
    - `overlap` (K,) in (0, 1): share of active members who belong to the international community.
    - `knowledge` (K,) > 0: localized knowledge stock (capability), in frontier units.
    - `internationalization` (K,) > 0: internationalization of the region's firms (exports intensity).
    - `development` () > 0: regional development, 1 at the reference level.
    - `disconnection` () in (0, 1): 1 - Lc, where Lc is the local connectedness between core city
      and catchment (read it as the property `local_connectedness`). The complement is stored
      because Lc approaches 1 under strong renewal, where float32 cannot tell it from 1.
    - `catchment_share` () in (0, 1): share of opportunities that reach the catchment area.
    """

    active: Float[Array, "k"]
    passive: Float[Array, "k"]
    overlap: Float[Array, "k"]
    knowledge: Float[Array, "k"]
    internationalization: Float[Array, "k"]
    development: Float[Array, ""]
    disconnection: Float[Array, ""]
    catchment_share: Float[Array, ""]

    @property
    def local_connectedness(self) -> Array:
        """Lc in (0, 1): connectedness between core city and catchment."""
        return 1.0 - self.disconnection


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


class Flows(eqx.Module):
    """Yearly flows of one region, kept for diagnosis and tests (K,)."""

    inflow: Float[Array, "k"]
    activation: Float[Array, "k"]
    reproduction: Float[Array, "k"]
    new_overlap: Float[Array, "k"]
    buzz: Float[Array, "k"]
    pipeline: Float[Array, "k"]

