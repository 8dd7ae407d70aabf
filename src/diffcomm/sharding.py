"""Regions across devices: a one-axis device mesh named `regions`, and inputs placed on it.

Sharding is placement, not a different program: a `jit`-compiled function computes the same
values whatever the placement of its inputs, and XLA's SPMD partitioner adds the communication
that the cross-local ties (a gather over edges whose ends may sit on other devices) and the
international reductions (sums over all regions) need. So the model code does not change:
`shard_regions` places every array that has a region axis split along it, and the compiled
simulation, loss, gradient and policy objective run on every device of the mesh, each holding
its share of the regions. Outputs come back sharded the same way; NumPy gathers them on read.

Each device must hold the same number of regions (XLA tiles an axis evenly), so the number of
devices must divide the number of regions. Several hosts: start every process with
`jax.distributed.initialize()` before anything else; `jax.devices()` then lists the devices of
all hosts and the same mesh spans them (README, "Many devices").
"""

from __future__ import annotations

from typing import TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .errors import ConfigError

__all__ = ["AXIS", "region_mesh", "shard_regions"]

AXIS = "regions"
T = TypeVar("T")


def region_mesh(devices: int) -> Mesh | None:
    """A mesh over the first `devices` of `jax.devices()` with one axis, `AXIS`; None for 1."""
    if devices == 1:
        return None
    available = jax.devices()
    if devices > len(available):
        platform = available[0].platform
        hint = (f"; on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count={devices} before starting"
                if platform == "cpu" else "")
        raise ConfigError(f"runtime.devices={devices}, but JAX sees {len(available)} {platform} device(s){hint}")
    return Mesh(np.asarray(available[:devices]), (AXIS,))


def shard_regions(tree: T, mesh: Mesh | None, num_regions: int) -> T:
    """`tree` with every array leaf that has an axis of length `num_regions` split along the last
    such axis over `mesh`, and every other array leaf copied to each device; unchanged without a
    mesh. (Should another axis happen to have that length too, only the placement differs: the
    values computed from it are the same.)"""
    if mesh is None:
        return tree
    size = mesh.shape[AXIS]
    if num_regions % size:
        fits = [d for d in range(1, len(jax.devices()) + 1) if num_regions % d == 0]
        raise ConfigError(f"runtime.devices={size} must divide the number of regions, {num_regions}: each device holds "
                          f"as many; with the devices here, one of {fits}")

    def place(x):
        if not isinstance(x, (jax.Array, np.ndarray)):
            return x
        axes = [i for i, d in enumerate(np.shape(x)) if d == num_regions]
        spec = [None] * np.ndim(x)
        if axes:
            spec[axes[-1]] = AXIS
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec)))

    return jax.tree_util.tree_map(place, tree)
