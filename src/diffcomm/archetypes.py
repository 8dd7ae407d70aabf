"""The archetypal regions of Bathelt & Cantwell (section 4): a driver profile and an initial
community for each, as plain data (`scenario.py` turns them into regions)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Archetype:
    """Driver profile (z-scores unless noted) and initial state of an archetypal region."""

    description: str
    connecting: float
    educating: float
    migrating: float
    specializing: float  # in the region's lead domain; the others get `specializing_other`
    amenities: float
    openness: float  # about [0, 1]
    anchors: float
    middleground: float
    place_policy: float
    mne_presence: float  # >= 0
    spawning_share: float  # in [0, 1]
    active: float  # initial active members (hundreds) in the lead domain
    knowledge: float
    overlap: float
    specializing_other: float = -0.3


ARCHETYPES: dict[str, Archetype] = {
    "world_city": Archetype(
        "global/world city: connecting", connecting=2.0, educating=0.5, migrating=1.0, specializing=0.0,
        amenities=1.0, openness=0.8, anchors=1.0, middleground=0.5, place_policy=0.3, mne_presence=1.5,
        spawning_share=0.4, active=25.0, knowledge=25.0, overlap=0.25, specializing_other=0.0,
    ),
    "university_city": Archetype(
        "university city: educating/training", connecting=0.0, educating=2.0, migrating=0.5, specializing=0.5,
        amenities=0.5, openness=0.6, anchors=0.5, middleground=0.5, place_policy=0.5, mne_presence=0.5,
        spawning_share=0.6, active=12.0, knowledge=18.0, overlap=0.15,
    ),
    "immigrant_gateway": Archetype(
        "immigrant gateway: migrating", connecting=0.5, educating=0.0, migrating=2.0, specializing=0.0,
        amenities=0.0, openness=1.0, anchors=0.0, middleground=0.0, place_policy=0.0, mne_presence=0.7,
        spawning_share=0.5, active=10.0, knowledge=12.0, overlap=0.2,
    ),
    "specialized_cluster": Archetype(
        "specialized cluster: clustering/specializing", connecting=0.0, educating=0.0, migrating=0.0,
        specializing=2.5, amenities=0.0, openness=0.4, anchors=1.5, middleground=1.0, place_policy=0.5,
        mne_presence=1.0, spawning_share=0.5, active=12.0, knowledge=15.0, overlap=0.15, specializing_other=-0.5,
    ),
    "normal_region": Archetype(
        "normal region: small community, few anchors", connecting=-0.5, educating=-0.5, migrating=-0.5,
        specializing=0.0, amenities=-0.5, openness=0.3, anchors=-1.0, middleground=-0.5, place_policy=0.0,
        mne_presence=0.2, spawning_share=0.5, active=2.0, knowledge=5.0, overlap=0.05,
    ),
}
