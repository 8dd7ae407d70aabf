"""Small scenarios shared by the tests."""

import dataclasses

import jax.numpy as jnp

from diffcomm.model import Drivers, Graph, Params, init_state
from diffcomm.simulate import make_forcing, simulate


def uniform_drivers(num_regions: int, num_domains: int, **values) -> Drivers:
    """Drivers equal in every region: z-scores 0, openness 0.5, MNE presence 1, spawning 0.5."""
    base = dict(
        connecting=0.0, educating=0.0, migrating=0.0, amenities=0.0, openness=0.5, anchors=0.0,
        middleground=0.0, place_policy=0.0, mne_presence=1.0, spawning_share=0.5,
    )
    base.update({k: v for k, v in values.items() if k != "specializing"})
    fields = {k: jnp.broadcast_to(jnp.asarray(v, dtype=float), (num_regions,)) for k, v in base.items()}
    spec = jnp.broadcast_to(jnp.asarray(values.get("specializing", 0.0), dtype=float), (num_regions, num_domains))
    return Drivers(**fields, specializing=spec)


def run(params, drivers, *, years, active=5.0, graph=None, shock=None, levers=None, **init):
    """Simulate `years` years from a state with `active` members everywhere (or per region)."""
    num_regions, num_domains = drivers.specializing.shape
    graph = Graph.empty() if graph is None else graph
    active = jnp.broadcast_to(jnp.asarray(active, dtype=float).reshape(-1, 1) if jnp.ndim(active) else active,
                              (num_regions, num_domains))
    state = init_state(params, graph, active=active, **init)
    forcing = make_forcing(years, num_regions, shock=shock, levers=levers)
    return simulate(params, state, drivers, graph, forcing)


def replace(drivers: Drivers, **changes) -> Drivers:
    return dataclasses.replace(drivers, **{k: jnp.asarray(v, dtype=float) for k, v in changes.items()})


__all__ = ["Params", "uniform_drivers", "run", "replace"]
