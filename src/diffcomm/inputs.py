"""What the model is given: region drivers, policy levers, the tie graph, and the yearly forcing.

Each type is an `eqx.Module` of arrays with a leading region axis R when batched (and a leading
year axis T inside `Forcing`). Levers are policy actions; each acts on the driver or condition
named beside its field in `Levers` (a lever is what a policy does, a driver is the force it
changes, hence `education` -> `educating` and `spawning` -> `spawning_share`).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


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
    attraction: Float[Array, ""]  # log-offset of the inflow of new members that the other drivers miss (0: none)
    buzz_quality: Float[Array, ""]  # log-offset of the productivity of local buzz that the other drivers miss (0: none)
    openness: Float[Array, ""]  # >= 0, about [0, 1]: openness to an influx of people and ideas
    anchors: Float[Array, ""]  # z-score: leaders and anchor firms
    middleground: Float[Array, ""]  # z-score: middleground places, events, organisations
    place_policy: Float[Array, ""]  # z-score: place-based policy and support organisations
    mne_presence: Float[Array, ""]  # >= 0: presence of multinational enterprises
    spawning_share: Float[Array, ""]  # in [0, 1]: local spawning share of MNE strategy (phi)

    @classmethod
    def uniform(cls, num_regions: int, num_domains: int, **values) -> Drivers:
        """Drivers equal in every region: the values given, the others at `NEUTRAL_DRIVERS`.

        `specializing` may be a scalar or have length K; every other value is a scalar.

        ```python
        drivers = Drivers.uniform(4, 2, educating=1.0)  # four regions, two domains
        ```
        """
        unknown = sorted(set(values) - set(NEUTRAL_DRIVERS) - {"specializing"})
        if unknown:
            raise ValueError(f"unknown driver(s) {unknown}; known: {sorted([*NEUTRAL_DRIVERS, 'specializing'])}")
        scalars = {**NEUTRAL_DRIVERS, **{k: v for k, v in values.items() if k != "specializing"}}
        fields = {k: jnp.full((num_regions,), v, dtype=float) for k, v in scalars.items()}
        specializing = jnp.broadcast_to(jnp.asarray(values.get("specializing", 0.0), dtype=float), (num_regions, num_domains))
        return cls(**fields, specializing=specializing)


NEUTRAL_DRIVERS: dict[str, float] = dict(
    connecting=0.0, educating=0.0, migrating=0.0, amenities=0.0, attraction=0.0, buzz_quality=0.0, openness=0.5, anchors=0.0,
    middleground=0.0, place_policy=0.0, mne_presence=1.0, spawning_share=0.5,
)
"""Every driver but `specializing` (neutral at 0) at its neutral value: z-scores at the mean,
no extra attraction or buzz quality, openness 0.5, MNE presence 1, spawning share 0.5. Drivers the data do not
observe sit here (a calibration adds its latent region effects to `attraction` and `buzz_quality`)."""


LATENT_DRIVERS: tuple[str, ...] = ("attraction", "buzz_quality")
"""Drivers that a calibration may estimate per region as latent effects (`effects.py`)."""


class Levers(eqx.Module):
    """Policy levers for one region and year, each added to the driver or condition it acts on.

    Zero is no policy (`Levers.zeros`). `spawning` raises the spawning share smoothly toward 1.
    """

    education: Float[Array, ""]  # -> educating
    openness: Float[Array, ""]  # -> openness (attraction of skilled migrants)
    middleground: Float[Array, ""]  # -> middleground and support organisations
    place_policy: Float[Array, ""]  # -> place-based policy
    connecting: Float[Array, ""]  # -> connecting (international fairs and associations)
    spawning: Float[Array, ""]  # -> spawning share (incentives for MNE local spawning)

    @classmethod
    def zeros(cls, shape: tuple[int, ...] = ()) -> Levers:
        return cls(**{name: jnp.zeros(shape) for name in LEVERS})

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


LEVERS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Levers))
"""The names of the policy levers, in declaration order: the one list of them."""


INITIAL_TIE = 0.05
"""Every tie's strength in the first year (`model.init_state`), or the mean of those strengths when an
earlier period of transfers sets them (`DataConfig.initial_tie_period`)."""


class Graph(eqx.Module):
    """Cross-local ties as a directed edge list; knowledge flows from `source` to `target`."""

    source: Int[Array, " e"]
    target: Int[Array, " e"]
    affinity: Float[Array, " e"]  # in [0, 1]: institutional and cognitive affinity of the pair

    @classmethod
    def empty(cls) -> Graph:
        return cls(jnp.zeros((0,), int), jnp.zeros((0,), int), jnp.zeros((0,)))


class Forcing(eqx.Module):
    """What changes from year to year: policy levers, disruption shocks and, where the data
    observe them by period, the drivers themselves (leading axis T)."""

    levers: Levers | None  # each field (T, R); None: no policy, every lever at 0 (and nothing stored)
    shock: Float[Array, "t r"]  # xi in [0, 1]
    drivers: Drivers | None = None  # each field (T, R, ...): the year's drivers; None: the simulation's constant ones
