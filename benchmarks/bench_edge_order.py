"""The order of the tie graph's edges: grouped by target against random, in one process.

The ties' knowledge flows are summed per target region with `segment_sum`, a scatter. On CPU,
XLA's scatter adds windows (here one value per domain) for consecutive regions several times
slower than the same windows in random order, so `scenario.synthetic_regions` stores its edges
in random order. This script times the same simulation both ways, forward and checkpointed
gradient (the benchmark's loss), interleaving the calls so that load on the machine falls on
both, and reports the ratios; it also times the scatter alone.

    python benchmarks/bench_edge_order.py [--regions 100000] [--years 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_simulate import K, scenario_of_size  # noqa: E402
from common import write_result  # noqa: E402

from diffcomm.inputs import Graph  # noqa: E402
from diffcomm.params import Params  # noqa: E402
from diffcomm.simulate import make_forcing, simulate  # noqa: E402


def interleaved_best(functions: dict, repeats: int) -> dict:
    """The best wall time of each function over `repeats` rounds that call each once in turn."""
    for f in functions.values():
        jax.block_until_ready(f())
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, f in functions.items():
            start = time.perf_counter()
            jax.block_until_ready(f())
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=100_000)
    parser.add_argument("--years", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    params = Params.from_natural(K)
    sc = scenario_of_size(params, args.regions, jax.random.key(0))
    forcing = make_forcing(args.years, args.regions)
    # the scenario's random order, and the same edges grouped by target (a stable sort keeps each
    # target's edges in the same relative order)
    grouped = np.argsort(np.asarray(sc.graph.target), kind="stable")
    orders = {"random": sc.initial,
              "grouped": eqx.tree_at(lambda s: s.world.ties, sc.initial, sc.initial.world.ties[grouped])}
    graphs = {"random": sc.graph,
              "grouped": Graph(sc.graph.source[grouped], sc.graph.target[grouped], sc.graph.affinity[grouped])}

    def forward(name):
        def run(prm):
            return simulate(prm, orders[name], sc.drivers, graphs[name], forcing, record_states=False)[1].observations
        f = jax.jit(run)
        return lambda: f(params)

    def gradient(name):
        def loss(prm):
            _, traj = simulate(prm, orders[name], sc.drivers, graphs[name], forcing, record_states=False, checkpoint=True)
            return jnp.mean(jnp.log(traj.observations.patents)) + jnp.mean(traj.observations.nonlocal_share)
        g = jax.jit(jax.grad(loss))
        return lambda: g(params)

    a, b = forward("random")(), forward("grouped")()
    difference = float(jnp.max(jnp.abs(a.patents - b.patents) / a.patents))
    best = interleaved_best({f"{kind} {name}": make(name) for kind, make in [("forward", forward), ("gradient", gradient)]
                             for name in orders}, args.repeats)
    flows = jnp.asarray(np.random.default_rng(0).uniform(size=(sc.graph.source.shape[0], K)), jnp.float32)
    scatter = jax.jit(lambda f, t: jax.ops.segment_sum(f, t, num_segments=args.regions))
    scatter_best = interleaved_best({f"scatter {name}": (lambda t=graphs[name].target: scatter(flows, t)) for name in orders},
                                    args.repeats * 4)

    region_years = args.regions * args.years
    result = dict(regions=args.regions, years=args.years, domains=K, edges=int(sc.graph.source.shape[0]),
                  repeats=args.repeats, max_relative_difference_patents=difference,
                  **{f"{name.replace(' ', '_')}_seconds": t for name, t in {**best, **scatter_best}.items()})
    for kind in ("forward", "gradient"):
        result[f"{kind}_random_over_grouped_speed"] = best[f"{kind} grouped"] / best[f"{kind} random"]
        print(f"{kind:8s} grouped {region_years / best[f'{kind} grouped']:.3e} region-years/s, random "
              f"{region_years / best[f'{kind} random']:.3e}: x{result[f'{kind}_random_over_grouped_speed']:.2f}")
    result["scatter_random_over_grouped_speed"] = scatter_best["scatter grouped"] / scatter_best["scatter random"]
    print(f"scatter alone: grouped {1e3 * scatter_best['scatter grouped']:.2f} ms, random "
          f"{1e3 * scatter_best['scatter random']:.2f} ms a year; patents differ by at most {difference:.1e} (relative)")
    write_result(result, "edge_order", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
