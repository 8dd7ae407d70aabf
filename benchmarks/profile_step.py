"""Where a year of the simulation spends its time: XLA's kernels, from JAX's profiler.

Runs the forward pass or the checkpointed gradient (the benchmark's loss) once under
`jax.profiler.trace`, reads the kernels' times from the trace, and groups them by what each
kernel writes: a scalar (a reduction to one number: in the gradient, mostly a parameter's
cotangent), a (K,) vector, an array over edges, an array over regions. Prints milliseconds a
year per group and the slowest kernels. Times under the profiler run longer than without it;
read them as shares.

    python benchmarks/profile_step.py [--regions 100000] [--years 20] [--gradient] [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from bench_simulate import K, scenario_of_size  # noqa: E402

from diffcomm.params import Params  # noqa: E402
from diffcomm.simulate import make_forcing, simulate  # noqa: E402

OUTPUT = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\([^)]*\)|\w+\[[^\]]*\])", re.M)


def kernel_times(fn, arg) -> collections.Counter:
    """Microseconds per kernel name over one call of `fn(arg)` (compiled and warmed up first)."""
    jax.block_until_ready(fn(arg))
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            jax.block_until_ready(fn(arg))
        trace = json.load(gzip.open(next(Path(folder).rglob("*.trace.json.gz"))))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    times = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            times[event["name"]] += event.get("dur", 0)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=100_000)
    parser.add_argument("--years", type=int, default=20)
    parser.add_argument("--gradient", action="store_true", help="the checkpointed gradient instead of the forward pass")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)

    params = Params.from_natural(K)
    sc = scenario_of_size(params, args.regions, jax.random.key(0))
    forcing = make_forcing(args.years, args.regions)

    def forward(prm):
        return simulate(prm, sc.initial, sc.drivers, sc.graph, forcing, record_states=False)[1].observations

    def loss(prm):
        _, traj = simulate(prm, sc.initial, sc.drivers, sc.graph, forcing, record_states=False, checkpoint=True)
        return jnp.mean(jnp.log(traj.observations.patents)) + jnp.mean(traj.observations.nonlocal_share)

    fn = jax.jit(jax.grad(loss) if args.gradient else forward)
    outputs = dict(OUTPUT.findall(fn.lower(params).compile().as_text()))
    times = {name: t for name, t in kernel_times(fn, params).items() if name in outputs}
    edges = str(sc.graph.source.shape[0])

    def group(shape: str) -> str:
        if shape.startswith("("):
            return "tuple"
        if re.fullmatch(r"f\d+\[\]", shape):
            return "scalar (reduction)"
        if edges in shape:
            return "over edges"
        if str(args.regions) in shape:
            return "over regions"
        return "small (K or fewer)"

    total, count = collections.Counter(), collections.Counter()
    for name, t in times.items():
        total[group(outputs[name])] += t
        count[group(outputs[name])] += 1
    per_year = 1e3 * args.years
    all_time = sum(total.values())
    print(f"{'gradient' if args.gradient else 'forward'}, R = {args.regions}, {args.years} years: "
          f"{len(times)} kernels run, {all_time / per_year:.2f} ms of kernel time a year")
    for name, t in total.most_common():
        print(f"  {name:20s} {t / per_year:8.2f} ms a year  {100 * t / all_time:5.1f}%  {count[name]:4d} kernels")
    print("slowest kernels:")
    for name, t in sorted(times.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {t / per_year:8.3f} ms a year  {name}  -> {outputs[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
