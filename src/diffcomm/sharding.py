"""Regions or NUTS chains across devices: a one-axis device mesh named `regions` or `chains`, and
inputs placed on it.

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

NUTS chains (`chain_mesh`, `shard_chains`): the sampler's chains are one `vmap`, so splitting
its chain axis over devices splits the work with no communication but the chains' mean
acceptance (one step-size search for all) and the lockstep of their trees. On CPU, XLA runs one
device's program on about 1.7 of 2 cores; two CPU devices with two chains each use both
(`provide_cpu_devices`, called by the command line before JAX's first computation).
"""

from __future__ import annotations

import logging
import os
from typing import Callable, TypeVar

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .errors import ConfigError

__all__ = ["AXIS", "CHAINS", "chain_devices", "chain_mesh", "provide_cpu_devices", "region_mesh", "shard_chains",
           "shard_regions"]

AXIS = "regions"
CHAINS = "chains"
T = TypeVar("T")


def _mesh(count: int, axis: str, key: str) -> Mesh:
    """A mesh over the first `count` of `jax.devices()` with one axis, `axis`; a `ConfigError`
    naming the option `key` where JAX sees fewer."""
    available = jax.devices()
    if count > len(available):
        platform = available[0].platform
        hint = (f"; on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count={count} before starting"
                if platform == "cpu" else "")
        raise ConfigError(f"{key}={count}, but JAX sees {len(available)} {platform} device(s){hint}")
    return Mesh(np.asarray(available[:count]), (axis,))


def region_mesh(devices: int) -> Mesh | None:
    """A mesh over the first `devices` of `jax.devices()` with one axis, `AXIS`; None for 1."""
    return None if devices == 1 else _mesh(devices, AXIS, "runtime.devices")


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


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def chain_devices(chains: int, asked: int, available: int) -> int:
    """Devices `chains` are split over: `asked`, or for 0 the most of `available` that divides `chains`."""
    if asked:
        return asked
    return max(d for d in range(1, min(chains, available) + 1) if chains % d == 0)


def provide_cpu_devices(count: int) -> None:
    """Ask JAX for `count` CPU devices. Only before its first computation, and not where `XLA_FLAGS`
    already sets the count; otherwise the devices stay as they are (`chain_mesh` then uses those)."""
    if count <= 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX has already computed something in this process
        pass


def chain_mesh(chains: int, asked: int) -> Mesh | None:
    """A mesh with one axis, `CHAINS`, over the devices `chains` NUTS chains are split over
    (`chain_devices` of `jax.devices()`); None for one."""
    count = chain_devices(chains, asked, len(jax.devices()))
    if count == 1:
        return None
    mesh = _mesh(count, CHAINS, "nuts.devices")
    logging.getLogger("diffcomm").info("posterior: the %d chains split over %d %s devices", chains, count,
                                       mesh.devices.flat[0].platform)
    return mesh


def shard_chains(tree: T, mesh: Mesh | None, by_chain: Callable[[T], tuple] | None = None) -> T:
    """`tree` with the arrays `by_chain(tree)` (all, without it) split along their first axis, the
    chains, over `mesh` and every other array copied to each of its devices; unchanged without a
    mesh. Placed the same way before every call, a tree keeps a compiled function from compiling again."""
    if mesh is None:
        return tree
    split, copied = NamedSharding(mesh, PartitionSpec(CHAINS)), NamedSharding(mesh, PartitionSpec())
    if by_chain is None:
        return jax.tree_util.tree_map(lambda x: jax.device_put(x, split), tree)
    tree = eqx.tree_at(by_chain, tree, tuple(jax.device_put(x, split) for x in by_chain(tree)))
    return jax.tree_util.tree_map(lambda x: x if getattr(x, "sharding", None) == split else jax.device_put(x, copied), tree)
