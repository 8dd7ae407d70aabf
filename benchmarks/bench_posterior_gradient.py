"""What one leapfrog step of NUTS costs on a calibration, and where it goes.

NUTS spends nearly all its time in the gradient of the log joint density (`loss.log_joint`),
one per leapfrog step, for `nuts.chains` chains at once (one `vmap`). This script times that
gradient for a calibration's data in one process, interleaving the variants so that load on the
machine falls on all of them, and reports their ratios:

- `float64`: the log joint of the estimate's free entries, in the calibration's precision;
- `centred`: the density the sampler runs on (`whitening.Coordinates.density`: the national
  effects in place of their innovations, and the log Jacobian);
- `centred, simulation float32`: that density as the sampler runs it by default
  (`nuts.simulation_precision=float32`: the simulation in single precision, the likelihood in
  double; and its log density's difference from `centred`);
- `float32`: the same arrays in single precision (and the log density's difference from float64);
- `10 ties`: the tie graph cut to its first 10 edges, which bounds what a cheaper aggregation of
  the cross-local ties (`model.tie_knowledge`, `model.tie_strength`: gathers and segment sums,
  whose transposes are each other) could save;
- `centred, simulation float32, plain gathers`: the sampler's density with the ties' gathers and
  segment sums as the plain `x[index]` and `jax.ops.segment_sum`, which `vmap` batches with the
  chains first, in place of `edges.take_rows` and `edges.sum_rows`, which move them last;
- `forward`: the log density alone.

With `--nuts N` and a run folder of `diffcomm calibrate inference=nuts`, it also times N NUTS
transitions of the run's chains from their last positions, with the run's metric and draws'
step, interleaved with the gradient of the same density for the same chains, and reports the
seconds per lockstep leapfrog step against one gradient (what the trees' own work adds); where
there are several devices (on CPU, as the command line makes them, one per core), also with the
chains split over them as the sampler splits them (`nuts.devices`), interleaved with one device.

    python benchmarks/bench_posterior_gradient.py <run folder of diffcomm calibrate> [--chains 4] [--repeats 15] [--nuts 8]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

import diffcomm.model  # noqa: E402
from diffcomm.calibrate import calibration_prior, load_calibration  # noqa: E402
from diffcomm.data import load_dataset  # noqa: E402
from diffcomm.loss import in_precision, log_joint  # noqa: E402
from diffcomm.sharding import chain_devices, chain_mesh, provide_cpu_devices, shard_chains, usable_cores  # noqa: E402
from diffcomm.whitening import coordinates  # noqa: E402


def few_ties(data, keep: int):
    """`data` with only the first `keep` edges of its tie graph."""
    graph = data.graph
    data = eqx.tree_at(lambda d: (d.graph.source, d.graph.target, d.graph.affinity), data,
                       (graph.source[:keep], graph.target[:keep], graph.affinity[:keep]))
    if data.initial_ties is not None:
        data = eqx.tree_at(lambda d: d.initial_ties, data, data.initial_ties[:keep])
    return data


@contextlib.contextmanager
def plain_gathers():
    """The model's tie reductions as the plain JAX ops while a program is traced and compiled (the
    compiled program keeps them; the caches are cleared on both sides so no other variant shares its trace)."""
    kept = diffcomm.model.take_rows, diffcomm.model.sum_rows
    diffcomm.model.take_rows = lambda x, index: x[index]
    diffcomm.model.sum_rows = lambda y, index, num: jax.ops.segment_sum(y, index, num_segments=num)
    jax.clear_caches()
    try:
        yield
    finally:
        diffcomm.model.take_rows, diffcomm.model.sum_rows = kept
        jax.clear_caches()


def density_of(estimate, mask, data, prior):
    """The log joint of the flat free entries near the estimate, and those entries."""
    free, fixed = eqx.partition(estimate, mask)
    flat, unravel = ravel_pytree(free)
    return (lambda x: log_joint(eqx.combine(unravel(x), fixed), data, prior)), flat


def nuts_against_gradient(run: Path, calibration, data, transitions: int, repeats: int = 3) -> dict | None:
    """Seconds per lockstep leapfrog step of `transitions` NUTS transitions from the last positions
    of a NUTS run's chains (its metric, its draws' step), and of the gradient of its density for
    those chains, interleaved; None without a NUTS checkpoint in `run`."""
    import blackjax

    from diffcomm.posterior import initial_chains, sampler_density
    from diffcomm.training import load_checkpoint

    config = calibration.config.nuts
    _, whiten, _, density = sampler_density(calibration, data, config)  # the sampler's own density
    dim = ravel_pytree(eqx.partition(calibration.estimate, calibration.mask)[0])[0].size
    resumed = load_checkpoint(run / "checkpoint_nuts",
                              initial_chains(config, jnp.zeros((config.chains, dim)), int(whiten.global_index.shape[0])))
    if resumed is None:
        return None
    arrays = resumed[0]
    metric, positions, step = arrays.metric, arrays.position, arrays.step[0, -1]
    kernel = blackjax.nuts.build_kernel()

    def log_density(v):
        return density(metric(v))

    @jax.jit
    def run_transitions(keys, positions):
        def chain(ks, v):
            def one(state, key):
                state, info = kernel(key, state, log_density, step, jnp.ones(dim, v.dtype), config.max_doublings)
                return state, info.num_integration_steps
            return jax.lax.scan(one, blackjax.nuts.init(v, log_density), ks)[1]
        return jax.vmap(chain)(keys, positions)

    gradient = jax.jit(jax.vmap(jax.value_and_grad(log_density)))
    keys = jax.vmap(lambda key: jax.random.split(key, transitions))(jax.random.split(jax.random.key(7), config.chains))
    placements = {"one": (keys, positions)}
    mesh = chain_mesh(config.chains, 0)  # the sampler's default: the chains split over the devices there are
    if mesh is not None:
        placements["split"] = (shard_chains(keys, mesh), shard_chains(positions, mesh))
    nuts_times, gradient_times = ({name: [] for name in placements} for _ in range(2))
    lockstep = {}
    for _ in range(repeats + 1):  # the first round compiles; interleaved, so load falls on both placements
        for name, (k, v) in placements.items():
            start = time.perf_counter()
            jax.block_until_ready(gradient(v))
            gradient_times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            steps = np.asarray(jax.block_until_ready(run_transitions(k, v)))
            nuts_times[name].append(time.perf_counter() - start)
            lockstep[name] = int(steps.max(0).sum())  # a transition of all chains lasts as long as the longest tree
    per_step = {name: min(t[1:]) / lockstep[name] for name, t in nuts_times.items()}
    per_gradient = {name: min(t[1:]) for name, t in gradient_times.items()}
    result = dict(transitions=transitions, lockstep_steps=lockstep["one"], seconds_per_lockstep_step=round(per_step["one"], 5),
                  gradient_seconds=round(per_gradient["one"], 5), ratio=round(per_step["one"] / per_gradient["one"], 3))
    if mesh is not None:
        result["split"] = dict(devices=mesh.size, seconds_per_lockstep_step=round(per_step["split"], 5),
                               gradient_seconds=round(per_gradient["split"], 5),
                               speedup=round(per_step["one"] / per_step["split"], 3))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--nuts", type=int, default=0, help="NUTS transitions to time from a NUTS run's last positions")
    args = parser.parse_args()
    provide_cpu_devices(chain_devices(args.chains, 0, usable_cores()))  # as the command line makes them for NUTS
    warnings.filterwarnings("ignore", message="Explicitly requested dtype")  # float64 constants, in float32 as asked
    calibration = load_calibration(args.run)
    data = load_dataset(calibration.config.data)
    prior = calibration_prior(calibration.config)
    noise = 0.01 * jax.random.normal(jax.random.key(0), (args.chains, 1))

    variants, values = {}, {}
    for name, estimate, dataset, x64 in [("float64", calibration.estimate, data, True),
                                         ("float32", *in_precision((calibration.estimate, data), jnp.float32), False),
                                         ("10 ties", calibration.estimate, few_ties(data, 10), True)]:
        with jax.enable_x64(x64):
            density, flat = density_of(estimate, calibration.mask, dataset, prior)
            points = flat + noise.astype(flat.dtype) * jnp.ones_like(flat)
            gradient = jax.jit(jax.vmap(jax.value_and_grad(density)))
            values[name] = np.asarray(gradient(points)[0], np.float64)
            variants[name] = (gradient, points, x64)
            if name == "float64":
                forward = jax.jit(jax.vmap(density))
                variants["forward"] = (forward, points, x64)
                coords = coordinates(calibration)
                sampled = jax.jit(jax.vmap(jax.value_and_grad(lambda y: coords.log_density(y, data, prior))))
                variants["centred"] = (sampled, jax.vmap(coords.centred)(points), x64)
                mixed = jax.jit(jax.vmap(jax.value_and_grad(lambda y: coords.log_density(y, data, prior, jnp.float32))))
                variants["centred, simulation float32"] = (mixed, jax.vmap(coords.centred)(points), x64)
                values["centred"] = np.asarray(sampled(variants["centred"][1])[0])
                values["centred, simulation float32"] = np.asarray(mixed(variants["centred"][1])[0])
                with plain_gathers():
                    plain = mixed.lower(variants["centred"][1]).compile()
                variants["centred, simulation float32, plain gathers"] = (plain, variants["centred"][1], x64)
    times = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved: load on the machine falls on every variant
        for name, (fn, points, x64) in variants.items():
            with jax.enable_x64(x64):
                jax.block_until_ready(fn(points))
                start = time.perf_counter()
                jax.block_until_ready(fn(points))
                times[name].append(time.perf_counter() - start)
    best = {name: min(t) for name, t in times.items()}
    result = dict(regions=data.num_regions, years=len(data.years) - 1, edges=int(data.graph.source.shape[0]),
                  chains=args.chains, repeats=args.repeats, dimension=int(ravel_pytree(eqx.partition(
                      calibration.estimate, calibration.mask)[0])[0].size),
                  seconds={name: round(t, 5) for name, t in best.items()},
                  ratio_to_float64={name: round(t / best["float64"], 3) for name, t in best.items()},
                  float32_log_density_error=float(np.max(np.abs(values["float32"] - values["float64"]))),
                  simulation_float32_log_density_error=float(np.max(np.abs(values["centred, simulation float32"]
                                                                            - values["centred"]))))
    for name, t in best.items():
        print(f"{name:45s} {1e3 * t:7.1f} ms per {args.chains}-chain evaluation, {t / best['float64']:.2f} of float64")
    print(f"simulation in float32: the log density differs from float64 by up to "
          f"{result['simulation_float32_log_density_error']:.2g}")
    print(f"float32 log density differs from float64 by up to {result['float32_log_density_error']:.2f} "
          f"(of {abs(values['float64'][0]):.0f})")
    if args.nuts:
        with jax.enable_x64(True):
            nuts = nuts_against_gradient(args.run, calibration, data, args.nuts)
        if nuts is None:
            print(f"--nuts: {args.run} holds no NUTS checkpoint (run diffcomm calibrate inference=nuts there)")
        else:
            result["nuts"] = nuts
            print(f"NUTS from the run's last positions: {1e3 * nuts['seconds_per_lockstep_step']:.1f} ms per lockstep "
                  f"leapfrog step ({nuts['lockstep_steps']} in {nuts['transitions']} transitions) against "
                  f"{1e3 * nuts['gradient_seconds']:.1f} ms for the gradient of its density: {nuts['ratio']:.2f}")
            if "split" in nuts:
                split = nuts["split"]
                print(f"the chains split over {split['devices']} devices: {1e3 * split['seconds_per_lockstep_step']:.1f} ms "
                      f"per lockstep leapfrog step ({1e3 * split['gradient_seconds']:.1f} ms a gradient), "
                      f"{split['speedup']:.2f} times faster than on one")
    write_result(result, "posterior_gradient")


if __name__ == "__main__":
    main()
