"""Synthetic regions for the archetypes of Bathelt & Cantwell (section 4), without data.

Each archetype is a profile of standardized drivers and initial community sizes; regions of an
archetype scatter around it with seeded noise. Ties between regions form a random directed
graph in which well-connected regions (world cities) are more often the source of knowledge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from .archetypes import ARCHETYPES
from .inputs import LEVERS, Drivers, Forcing, Graph, Levers
from .model import init_state
from .params import Params
from .simulate import make_forcing
from .state import State

if TYPE_CHECKING:
    from .config import ScenarioConfig


@dataclass(frozen=True)
class Scenario:
    """Regions ready to simulate: drivers, ties and initial state, with labels."""

    drivers: Drivers
    graph: Graph
    initial: State
    archetype: np.ndarray  # (R,) index into `archetype_names`
    archetype_names: tuple[str, ...]
    region_names: tuple[str, ...]

    @property
    def num_regions(self) -> int:
        return len(self.region_names)


def synthetic_regions(
    params: Params,
    counts: dict[str, int],
    *,
    key: jax.Array,
    noise: float = 0.3,
    ties_per_region: int = 4,
    spawning_share: float | None = None,
    mne_presence_scale: float = 1.0,
) -> Scenario:
    """Generate regions of the named archetypes, seeded.

    **Arguments:**

    - `params`: model parameters (they set K, and the initial world state).
    - `counts`: archetype name -> number of regions, e.g. `{"world_city": 2, "normal_region": 10}`.
    - `key`: a JAX PRNG key.
    - `noise`: standard deviation of region-level noise on every z-scored driver.
    - `ties_per_region`: incoming cross-local ties per region (0 for none).
    - `spawning_share`: if given, overrides every archetype's MNE spawning share (in [0, 1]).
    - `mne_presence_scale`: multiplies MNE presence (>= 0).

    **Returns:** a `Scenario`.

    ```python
    scenario = synthetic_regions(params, {"world_city": 1, "normal_region": 4}, key=jax.random.key(0))
    ```
    """
    unknown = sorted(set(counts) - set(ARCHETYPES))
    if unknown:
        raise ValueError(f"unknown archetype(s) {unknown}; known: {sorted(ARCHETYPES)}")
    for name, n in counts.items():
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"count of {name!r} must be a non-negative integer, got {n!r}")
    if noise < 0 or ties_per_region < 0 or mne_presence_scale < 0:
        raise ValueError("noise, ties_per_region and mne_presence_scale must be >= 0")
    if spawning_share is not None and not 0.0 <= spawning_share <= 1.0:
        raise ValueError(f"spawning_share must lie in [0, 1], got {spawning_share!r}")
    names = [n for n in ARCHETYPES if counts.get(n, 0) > 0]
    labels = np.concatenate([np.full(counts[n], i) for i, n in enumerate(names)]) if names else np.zeros(0, int)
    num_regions, num_domains = len(labels), params.num_domains
    if num_regions < 1:
        raise ValueError("a scenario needs at least one region")
    profiles = [ARCHETYPES[n] for n in names]

    def column(attr):
        return jnp.asarray([getattr(profiles[i], attr) for i in labels], dtype=float)

    k_noise, k_lead, k_edges, k_aff = jax.random.split(key, 4)
    scalar_fields = ["connecting", "educating", "migrating", "amenities", "anchors", "middleground", "place_policy"]
    eps = noise * jax.random.normal(k_noise, (len(scalar_fields) + num_domains, num_regions))
    lead = jax.random.randint(k_lead, (num_regions,), 0, num_domains)
    is_lead = jax.nn.one_hot(lead, num_domains)
    specializing = (
        is_lead * column("specializing")[:, None]
        + (1 - is_lead) * column("specializing_other")[:, None]
        + eps[len(scalar_fields):].T
    )
    phi = column("spawning_share") if spawning_share is None else jnp.full((num_regions,), float(spawning_share))
    drivers = Drivers(
        **{f: column(f) + eps[i] for i, f in enumerate(scalar_fields)},
        specializing=specializing,
        openness=column("openness"),
        attraction=jnp.zeros(num_regions),
        buzz_quality=jnp.zeros(num_regions),
        mne_presence=column("mne_presence") * mne_presence_scale,
        spawning_share=phi,
    )
    graph = _random_ties(k_edges, k_aff, drivers.connecting, ties_per_region)
    # the lead domain starts with the archetype's community; the others with a third of it
    active = column("active")[:, None] * (is_lead + (1 - is_lead) / 3.0)
    initial = init_state(
        params,
        graph,
        active=active,
        passive=active,
        overlap=column("overlap")[:, None] * jnp.ones((1, num_domains)),
        knowledge=column("knowledge")[:, None] * (0.5 + 0.5 * is_lead),
    )
    region_names = tuple(f"{names[i]}_{j:03d}" for i, j in zip(labels, _rank_within(labels)))
    return Scenario(drivers, graph, initial, labels, tuple(names), region_names)


def _rank_within(labels: np.ndarray) -> np.ndarray:
    rank = np.zeros(len(labels), int)
    for value in np.unique(labels):
        where = labels == value
        rank[where] = np.arange(where.sum())
    return rank


def _random_ties(k_edges, k_aff, connecting, ties_per_region: int) -> Graph:
    """Each region receives `ties_per_region` ties from sources drawn in proportion to exp(connecting).

    Memory is O(R): sources come from the cumulative distribution, and a draw of the region
    itself moves to the next region. The edges are stored in a random order rather than grouped
    by target: on CPU, XLA's scatter (the `segment_sum` of the knowledge flowing through ties) adds
    windows for consecutive regions about 4.5 times slower than windows in random order (2.85 ms
    against 0.64 ms a year at R = 1e5, K = 3), and the forward pass gains about 13%
    (`benchmarks/bench_edge_order.py`; README, "Simulation"). The order changes no value beyond
    float rounding.
    """
    num_regions = connecting.shape[0]
    if ties_per_region == 0 or num_regions < 2:
        return Graph.empty()
    cdf = jnp.cumsum(jax.nn.softmax(connecting))
    u = jax.random.uniform(k_edges, (num_regions, ties_per_region)) * cdf[-1]
    source = jnp.minimum(jnp.searchsorted(cdf, u), num_regions - 1)
    target = jnp.broadcast_to(jnp.arange(num_regions)[:, None], source.shape)
    source = jnp.where(source == target, (source + 1) % num_regions, source)
    affinity = jax.random.uniform(k_aff, (num_regions * ties_per_region,))
    order = jax.random.permutation(jax.random.fold_in(k_edges, 1), num_regions * ties_per_region)
    return Graph(source.reshape(-1)[order], target.reshape(-1)[order], affinity[order])


def shock_window(config: ScenarioConfig) -> np.ndarray:
    """The shock's intensity in each of `config.years` years (0 outside its window)."""
    window = np.zeros(config.years)
    window[config.shock.start - 1 : config.shock.start - 1 + config.shock.duration] = config.shock.intensity
    return window


def scenario_from_config(params: Params, config: ScenarioConfig) -> tuple[Scenario, Forcing]:
    """The synthetic regions of a `ScenarioConfig` and their forcing: its levers in every region
    and year, and its shock window (in the regions of the archetypes it names, or all)."""
    scenario = synthetic_regions(
        params, dict(config.counts), key=jax.random.key(config.seed), noise=config.noise,
        ties_per_region=config.ties_per_region, spawning_share=config.mne.spawning_share,
        mne_presence_scale=config.mne.presence_scale,
    )
    hit = np.ones(scenario.num_regions, bool)
    if config.shock.archetypes:
        chosen = [i for i, name in enumerate(scenario.archetype_names) if name in config.shock.archetypes]
        hit = np.isin(scenario.archetype, chosen)
    window = shock_window(config)
    levers = Levers(**{name: config.levers.get(name, 0.0) for name in LEVERS})
    forcing = make_forcing(config.years, scenario.num_regions, levers=levers, shock=jnp.asarray(window[:, None] * hit[None, :]))
    return scenario, forcing
