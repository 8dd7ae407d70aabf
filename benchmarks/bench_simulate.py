"""Throughput of the simulation: JAX forward and gradient vs. plain NumPy with the same algebra.

Prints a table and writes JSON (default `benchmarks/results/simulate_<platform>.json`). For each R
(default 1e3, 1e4, 1e5, 1e6; K = 3, T = 50, float32), in a process of its own (so that its peak
memory is its own), on both cores and on one (`os.sched_setaffinity` before JAX starts):

- region-years per second of the forward pass, of the gradient of a scalar loss (checkpointed
  scan body, the mode calibration uses, and storing every year's internals), and of the NumPy
  yardstick (`numpy_reference.py`: the same equations and the same algebra), all timed as the
  best of the same number of repeats after a warm-up call, after checking that JAX and NumPy
  give the same numbers; the gradient is skipped above R = 1e5 (its memory);
- XLA's cost analysis of ONE compiled year (a scan's cost counts its body once): flops,
  transcendental functions and bytes accessed per region-year, and the kernels (fusions) a year
  runs; the NumPy yardstick's transcendentals per region-year, counted on its calls;
- the fraction of the machine's limits the forward pass reaches: transcendentals per second
  against a kernel that does only exp and log, bytes per second against a streaming copy;
- peak resident memory of the process.

It also measures the peak memory of one gradient at R = 1e5, T = 200, and gives the GPU figure
for the forward pass that XLA's bytes per region-year and an H100's memory bandwidth imply,
labelled as an estimate (no GPU run here).

    python benchmarks/bench_simulate.py [--sizes 1000 10000 100000 1000000] [--years 50] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

if "--one-core" in sys.argv:  # before JAX starts its thread pool
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import numpy_reference  # noqa: E402
from common import best_time, write_result  # noqa: E402
from numpy_reference import simulate_numpy  # noqa: E402

from diffcomm.inputs import Levers  # noqa: E402
from diffcomm.model import step  # noqa: E402
from diffcomm.params import Params  # noqa: E402
from diffcomm.scenario import ARCHETYPES, synthetic_regions  # noqa: E402
from diffcomm.simulate import make_forcing, simulate  # noqa: E402

K = 3
H100_BANDWIDTH = 3.35e12  # bytes/s of HBM3 on an H100 SXM (NVIDIA's figure)
GRADIENT_ABOVE = 100_000  # no gradient above this many regions (its memory)
TRANSCENDENTAL = {"exp": 1, "log": 1, "log1p": 1, "expm1": 1, "tanh": 1, "logaddexp": 2}


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


def transcendental_rate(size: int = 1 << 24, repeats: int = 5) -> float:
    """Transcendental functions per second of a compiled kernel that does only exp and log (f32)."""
    x = jnp.linspace(0.5, 2.0, size, dtype=jnp.float32)
    kernel = jax.jit(lambda a: jnp.exp(a) + jnp.log(a))
    return 2 * size / best_time(lambda: kernel(x), repeats)


def year_cost(params, sc, forcing) -> dict:
    """XLA's cost analysis of one compiled year (`model.step` and the observations), per region-year."""
    p = params.natural()
    one_year = jax.jit(lambda state, levers, shock: step(p, state, sc.drivers, sc.graph, levers, shock)[:2])
    levers = None if forcing.levers is None else jax.tree_util.tree_map(lambda x: x[0], forcing.levers)
    compiled = one_year.lower(sc.initial, levers, forcing.shock[0]).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    text = compiled.as_text()
    r = sc.num_regions
    return dict(flops_per_region_year=cost.get("flops", float("nan")) / r,
                transcendentals_per_region_year=cost.get("transcendentals", float("nan")) / r,
                bytes_per_region_year=cost.get("bytes accessed", float("nan")) / r,
                fusions_per_year=text.count(" fusion("), scatters_per_year=text.count(" scatter("))


class _CountingNumpy:
    """`numpy` as `numpy_reference` sees it, counting the elements its transcendental calls return."""

    def __init__(self):
        self.count = 0

    def __getattr__(self, name):
        function = getattr(np, name)
        if name not in TRANSCENDENTAL:
            return function

        def counted(*args, **kwargs):
            out = function(*args, **kwargs)
            self.count += TRANSCENDENTAL[name] * np.size(out)
            return out

        return counted


def numpy_transcendentals(np_args, region_years: int) -> float:
    """Transcendental functions per region-year of the NumPy yardstick, counted on its calls."""
    counting = _CountingNumpy()
    numpy_reference.np = counting
    try:
        simulate_numpy(*np_args)
    finally:
        numpy_reference.np = np
    return counting.count / region_years


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
    levers = None if forcing.levers is None else {f.name: np.asarray(getattr(forcing.levers, f.name), dtype)
                                                  for f in dataclasses.fields(Levers)}
    return natural, state, drivers, graph, levers, np.asarray(forcing.shock, dtype)


def scenario_of_size(params, num_regions: int, key):
    per = num_regions // len(ARCHETYPES)
    counts = {name: per for name in ARCHETYPES}
    counts["normal_region"] += num_regions - per * len(ARCHETYPES)
    return synthetic_regions(params, counts, key=key, ties_per_region=4)


def bench_size(num_regions: int, num_years: int, repeats: int) -> dict:
    params = Params.from_natural(K)
    sc = scenario_of_size(params, num_regions, jax.random.key(0))
    shock = jnp.zeros((num_years, num_regions)).at[num_years // 2].set(0.5)
    forcing = make_forcing(num_years, num_regions, shock=shock)

    def forward():
        return simulate(params, sc.initial, sc.drivers, sc.graph, forcing, record_states=False)[1].observations

    def loss(prm, checkpoint):
        _, traj = simulate(prm, sc.initial, sc.drivers, sc.graph, forcing, record_states=False, checkpoint=checkpoint)
        return jnp.mean(jnp.log(traj.observations.patents)) + jnp.mean(traj.observations.nonlocal_share)

    jax_obs = forward()
    np_args = numpy_inputs(params, sc, forcing)
    np_obs = simulate_numpy(*np_args)
    # Both run in float32 here; rounding is amplified near the critical mass over 50 years, and the
    # sums over regions (the international community) are added in another order by XLA and NumPy,
    # so the check is loose, more so as R grows. tests/test_numpy_reference.py checks agreement to
    # 1e-9 in float64.
    rel = np.concatenate([np.ravel(np.abs(np_obs[k] - np.asarray(getattr(jax_obs, k))) / np.abs(np_obs[k])) for k in np_obs])
    worst, typical, off = float(rel.max()), float(np.median(rel)), float(np.mean(rel > 1e-3))
    if typical > 1e-4 or off > 1e-2:
        raise SystemExit(f"NumPy and JAX disagree at R={num_regions}: relative difference median {typical:.2e}, "
                         f"{100 * off:.2f}% of values off by more than 1e-3 (max {worst:.2e})")

    region_years = num_regions * num_years
    row = dict(regions=num_regions, years=num_years, domains=K, edges=int(sc.graph.source.shape[0]), repeats=repeats,
               **year_cost(params, sc, forcing),
               numpy_transcendentals_per_region_year=numpy_transcendentals(np_args, region_years),
               max_relative_difference_vs_numpy=worst, median_relative_difference_vs_numpy=typical,
               share_off_by_more_than_1e_3=off)
    row["forward_seconds"] = best_time(forward, repeats)
    row["numpy_seconds"] = best_time(lambda: simulate_numpy(*np_args), repeats)
    row["peak_rss_forward_bytes"] = peak_rss()  # the process so far: inputs, forward and NumPy runs
    if num_regions <= GRADIENT_ABOVE:
        gradient = jax.jit(jax.grad(lambda prm: loss(prm, True)))
        gradient_stored = jax.jit(jax.grad(lambda prm: loss(prm, False)))
        row["gradient_seconds"] = best_time(lambda: gradient(params), repeats)
        row["gradient_stored_seconds"] = best_time(lambda: gradient_stored(params), repeats)
        row["gradient_region_years_per_s"] = region_years / row["gradient_seconds"]
        row["gradient_over_forward"] = row["gradient_seconds"] / row["forward_seconds"]
        row["gradient_stored_over_forward"] = row["gradient_stored_seconds"] / row["forward_seconds"]
    row["forward_region_years_per_s"] = region_years / row["forward_seconds"]
    row["numpy_region_years_per_s"] = region_years / row["numpy_seconds"]
    row["jax_over_numpy_speedup"] = row["numpy_seconds"] / row["forward_seconds"]
    return row


def gradient_memory(num_regions: int, num_years: int) -> dict:
    """One checkpointed gradient at R, T: its seconds (compilation included) and the process's peak memory."""
    params = Params.from_natural(K)
    sc = scenario_of_size(params, num_regions, jax.random.key(0))
    forcing = make_forcing(num_years, num_regions)

    def loss(prm):
        _, traj = simulate(prm, sc.initial, sc.drivers, sc.graph, forcing, record_states=False, checkpoint=True)
        return jnp.mean(jnp.log(traj.observations.patents))

    started = time.perf_counter()
    jax.block_until_ready(jax.jit(jax.grad(loss))(params))
    return dict(regions=num_regions, years=num_years, seconds=time.perf_counter() - started, peak_rss_bytes=peak_rss())


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def child(args) -> None:
    """One measurement in this process; prints its JSON as the last line."""
    if args.gradient_memory:
        row = gradient_memory(args.child, args.years)
    else:
        repeats = args.repeats if args.child < 1_000_000 else args.repeats_large
        row = bench_size(args.child, args.years, repeats)
        row["peak_rss_bytes"] = peak_rss()  # with the gradients, where run
        row["transcendentals_per_s_limit"] = transcendental_rate()
        row["copy_bandwidth_bytes_per_s"] = stream_bandwidth()
    row["cores"] = len(os.sched_getaffinity(0))
    print(json.dumps(row))


def run_child(*extra: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(extra)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000, 1000000])
    parser.add_argument("--one-core-sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--years", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each side, after a warm-up call")
    parser.add_argument("--repeats-large", type=int, default=2, help="the same at R >= 1e6 (the NumPy side takes minutes)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--one-core", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gradient-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args)
        return 0
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), cores: {len(os.sched_getaffinity(0))}")
    header = (f"{'cores':>5} {'R':>8} {'fwd ry/s':>10} {'grad ry/s':>10} {'numpy ry/s':>10} {'grad/fwd':>8} {'jax/np':>7} "
              f"{'tr/ry':>9} {'B/ry':>6} {'%tr':>5} {'%bw':>5} {'fwd GB':>7} {'peak GB':>7}")
    print(header)
    rows = []
    common = ["--years", str(args.years), "--repeats", str(args.repeats), "--repeats-large", str(args.repeats_large)]
    for cores, sizes in (("both", args.sizes), ("one", args.one_core_sizes)):
        for size in sizes:
            row = run_child("--child", str(size), *common, *(["--one-core"] if cores == "one" else []))
            rate = row["forward_region_years_per_s"]
            limit = row["transcendentals_per_s_limit"]
            row["fraction_of_transcendental_limit"] = rate * row["transcendentals_per_region_year"] / limit
            row["fraction_of_bandwidth"] = rate * row["bytes_per_region_year"] / row["copy_bandwidth_bytes_per_s"]
            rows.append(row)
            grad = row.get("gradient_region_years_per_s", float("nan"))
            print(f"{row['cores']:>5} {size:>8} {rate:>10.3g} {grad:>10.3g} {row['numpy_region_years_per_s']:>10.3g} "
                  f"{row.get('gradient_over_forward', float('nan')):>8.2f} {row['jax_over_numpy_speedup']:>7.2f} "
                  f"{row['transcendentals_per_region_year']:>4.0f}/{row['numpy_transcendentals_per_region_year']:<4.0f} "
                  f"{row['bytes_per_region_year']:>6.0f} {100 * row['fraction_of_transcendental_limit']:>4.0f}% "
                  f"{100 * row['fraction_of_bandwidth']:>4.0f}% {row['peak_rss_forward_bytes'] / 1e9:>7.2f} "
                  f"{row['peak_rss_bytes'] / 1e9:>7.2f}", flush=True)
    memory = run_child("--child", "100000", "--years", "200", "--gradient-memory")
    print(f"gradient at R=1e5, T=200: peak {memory['peak_rss_bytes'] / 1e9:.2f} GB ({memory['seconds']:.1f} s with compilation)")
    largest = max(rows, key=lambda r: (r["regions"], r["cores"]))
    estimate = H100_BANDWIDTH / largest["bytes_per_region_year"]
    print(f"GPU estimate (not measured): {estimate:.3g} region-years/s forward on an H100 if bound by its "
          f"{H100_BANDWIDTH / 1e12:.2f} TB/s at XLA's {largest['bytes_per_region_year']:.0f} B/region-year")
    result = dict(
        device=dict(platform=device.platform, kind=device.device_kind, cores=len(os.sched_getaffinity(0)),
                    processor=platform.processor() or platform.machine(), jax=jax.__version__, numpy=np.__version__),
        rows=rows, gradient_memory=memory,
        gpu_estimate=dict(label="estimate from XLA's CPU bytes per region-year and the GPU's bandwidth, not a measurement",
                          device="NVIDIA H100 SXM", bandwidth_bytes_per_s=H100_BANDWIDTH,
                          bytes_per_region_year=largest["bytes_per_region_year"], forward_region_years_per_s=estimate),
    )
    write_result(result, "simulate", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
