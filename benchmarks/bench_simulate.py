"""Throughput of the simulation: JAX forward and gradient vs. plain NumPy, in one run.

Prints a table and writes JSON (default `benchmarks/results/simulate_<platform>.json`):
region-years per second for R = 1e3, 1e4, 1e5 (K = 3, T = 50), forward and gradient of a scalar
loss (with `checkpoint=True`, the mode used for calibration; the gradient that stores every
year's internals is reported too); the gradient/forward time ratio; JAX/NumPy speed ratio (after checking that both give the
same numbers); bytes moved per region-year and the fraction of the memory bandwidth measured on
this machine by a streaming copy that the forward pass reaches.

    python benchmarks/bench_simulate.py [--sizes 1000 10000 100000] [--years 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, write_result  # noqa: E402
from numpy_reference import simulate_numpy  # noqa: E402

from diffcomm.inputs import Levers  # noqa: E402
from diffcomm.params import Params  # noqa: E402
from diffcomm.scenario import ARCHETYPES, synthetic_regions  # noqa: E402
from diffcomm.simulate import make_forcing, simulate  # noqa: E402

K = 3


def stream_bandwidth(num_bytes: int = 1 << 29, repeats: int = 5) -> float:
    """Bytes per second of a large NumPy copy (read + write), a stand-in for STREAM copy."""
    a = np.ones(num_bytes // 8)
    b = np.empty_like(a)
    best = min(_time(lambda: np.copyto(b, a)) for _ in range(repeats))
    return 2 * a.nbytes / best


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bytes_per_region_year(sc, num_years: int) -> float:
    """Least traffic a year needs per region: state read and written, drivers, forcing, observations, ties."""
    itemsize = 4
    state_floats = 5 * K + 3
    driver_floats = sum(np.size(x) for x in jax.tree_util.tree_leaves(sc.drivers)) / sc.num_regions
    forcing_floats = len(dataclasses.fields(Levers)) + 1
    observation_floats = 5
    edges_per_region = sc.graph.source.shape[0] / sc.num_regions
    # per edge: tie read + write, affinity, two indices, the sender's and receiver's knowledge (K each)
    edge_floats = edges_per_region * (2 + 1 + 2 + 2 * K)
    return itemsize * (2 * state_floats + driver_floats + forcing_floats + observation_floats + edge_floats)


def numpy_inputs(params, sc, forcing, dtype=np.float32):
    p = params.natural()
    natural = {f.name: np.asarray(getattr(p, f.name), dtype) for f in dataclasses.fields(p)}
    regions = sc.initial.regions
    state = {f.name: np.asarray(getattr(regions, f.name), dtype) for f in dataclasses.fields(regions)}
    world = sc.initial.world
    state.update(international_members=np.asarray(world.international_members, dtype),
                 frontier=np.asarray(world.frontier, dtype), ties=np.asarray(world.ties, dtype))
    drivers = {f.name: np.asarray(getattr(sc.drivers, f.name), dtype) for f in dataclasses.fields(sc.drivers)}
    graph = dict(source=np.asarray(sc.graph.source), target=np.asarray(sc.graph.target),
                 affinity=np.asarray(sc.graph.affinity, dtype))
    levers = {f.name: np.asarray(getattr(forcing.levers, f.name), dtype) for f in dataclasses.fields(Levers)}
    return natural, state, drivers, graph, levers, np.asarray(forcing.shock, dtype)


def scenario_of_size(params, num_regions: int, key):
    per = num_regions // len(ARCHETYPES)
    counts = {name: per for name in ARCHETYPES}
    counts["normal_region"] += num_regions - per * len(ARCHETYPES)
    return synthetic_regions(params, counts, key=key, ties_per_region=4)


def bench_size(num_regions: int, num_years: int, repeats: int, numpy_repeats: int) -> dict:
    params = Params.from_natural(K)
    sc = scenario_of_size(params, num_regions, jax.random.key(0))
    shock = jnp.zeros((num_years, num_regions)).at[num_years // 2].set(0.5)
    forcing = make_forcing(num_years, num_regions, shock=shock)

    def forward():
        return simulate(params, sc.initial, sc.drivers, sc.graph, forcing, record_states=False)[1].observations

    def loss(prm, checkpoint):
        _, traj = simulate(prm, sc.initial, sc.drivers, sc.graph, forcing, record_states=False, checkpoint=checkpoint)
        return jnp.mean(jnp.log(traj.observations.patents)) + jnp.mean(traj.observations.nonlocal_share)

    gradient = jax.jit(jax.grad(lambda prm: loss(prm, True)))
    gradient_stored = jax.jit(jax.grad(lambda prm: loss(prm, False)))
    jax_obs = forward()
    np_args = numpy_inputs(params, sc, forcing)
    np_obs = simulate_numpy(*np_args)
    # Both run in float32 here; rounding is amplified near the critical mass over 50 years, so the
    # check is loose. tests/test_numpy_reference.py checks agreement to 1e-9 in float64.
    rel = np.concatenate([np.ravel(np.abs(np_obs[k] - np.asarray(getattr(jax_obs, k))) / np.abs(np_obs[k])) for k in np_obs])
    worst, typical, off = float(rel.max()), float(np.median(rel)), float(np.mean(rel > 1e-3))
    if typical > 1e-5 or off > 1e-3:
        raise SystemExit(f"NumPy and JAX disagree at R={num_regions}: relative difference median {typical:.2e}, "
                         f"{100 * off:.2f}% of values off by more than 1e-3 (max {worst:.2e})")

    t_forward = best_time(forward, repeats)
    t_gradient = best_time(lambda: gradient(params), repeats)
    t_gradient_stored = best_time(lambda: gradient_stored(params), repeats)
    t_numpy = best_time(lambda: simulate_numpy(*np_args), numpy_repeats)
    region_years = num_regions * num_years
    bpry = bytes_per_region_year(sc, num_years)
    return dict(
        regions=num_regions, years=num_years, domains=K, edges=int(sc.graph.source.shape[0]),
        forward_seconds=t_forward, gradient_seconds=t_gradient, numpy_seconds=t_numpy,
        forward_region_years_per_s=region_years / t_forward,
        gradient_region_years_per_s=region_years / t_gradient,
        numpy_region_years_per_s=region_years / t_numpy,
        gradient_over_forward=t_gradient / t_forward,
        gradient_stored_seconds=t_gradient_stored,
        gradient_stored_over_forward=t_gradient_stored / t_forward,
        jax_over_numpy_speedup=t_numpy / t_forward,
        max_relative_difference_vs_numpy=worst,
        median_relative_difference_vs_numpy=typical,
        share_off_by_more_than_1e_3=off,
        bytes_per_region_year=bpry,
        forward_bytes_per_s=bpry * region_years / t_forward,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--years", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    bandwidth = stream_bandwidth()
    rows = []
    print(f"device: {device.platform} ({device.device_kind}), cores: {os.cpu_count()}, "
          f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s")
    header = (f"{'R':>8} {'fwd ry/s':>12} {'grad ry/s':>12} {'numpy ry/s':>12} {'grad/fwd':>9} {'(stored)':>9} "
              f"{'jax/numpy':>10} {'B/ry':>6} {'%bw':>6}")
    print(header)
    for size in args.sizes:
        row = bench_size(size, args.years, args.repeats, max(1, args.repeats // 2))
        row["fraction_of_bandwidth"] = row["forward_bytes_per_s"] / bandwidth
        rows.append(row)
        print(f"{size:>8} {row['forward_region_years_per_s']:>12.3g} {row['gradient_region_years_per_s']:>12.3g} "
              f"{row['numpy_region_years_per_s']:>12.3g} {row['gradient_over_forward']:>9.2f} "
              f"{row['gradient_stored_over_forward']:>9.2f} "
              f"{row['jax_over_numpy_speedup']:>10.2f} {row['bytes_per_region_year']:>6.0f} "
              f"{100 * row['fraction_of_bandwidth']:>5.1f}%", flush=True)
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        scaling = (b["forward_region_years_per_s"] / a["forward_region_years_per_s"])
        print(f"throughput ratio R={b['regions']} vs R={a['regions']}: {scaling:.2f} (1.0 = linear time in R)")
    result = dict(
        device=dict(platform=device.platform, kind=device.device_kind, cpu_count=os.cpu_count(),
                    machine=platform.machine(), jax=jax.__version__, numpy=np.__version__),
        copy_bandwidth_bytes_per_s=bandwidth,
        rows=rows,
    )
    write_result(result, "simulate", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
