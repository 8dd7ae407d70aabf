"""An ensemble in one call against the same simulations one call at a time.

    python benchmarks/bench_ensemble.py [--scenarios 3] [--draws 200] [--years 10] [--out FILE]

On the calibrated US metros (the run folder `experiments/us_metros/run`, 1,002 regions), S
scenarios x N Laplace draws from 2010 on, double precision as calibrated: the ensemble
(`ensemble.run_ensemble`, nested `vmap`, one compiled call per chunk of draws) against a Python
loop of `simulate` over every scenario and draw (compiled once, called S N times), both after a
warm-up call and timed as the best of 3. Both compute the same numbers (checked); the ratio is
what to read, since absolute times on a shared machine move with its load.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from common import best_time, write_result  # noqa: E402

from diffcomm.calibrate import load_calibration  # noqa: E402
from diffcomm.data import load_dataset  # noqa: E402
from diffcomm.ensemble import lever_forcings, run_ensemble  # noqa: E402
from diffcomm.forecast import calibrated_regions  # noqa: E402
from diffcomm.laplace import draw_estimates  # noqa: E402
from diffcomm.simulate import simulate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("experiments/us_metros/run"))
    parser.add_argument("--scenarios", type=int, default=3)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    calibration = load_calibration(args.run)
    data = load_dataset(calibration.config.data)
    sampled = draw_estimates(calibration.estimate, calibration.mask, calibration.laplace, key=jax.random.key(0), num=args.draws)
    initial, drivers, graph = calibrated_regions(calibration, data, sampled)
    settings = [{"middleground": float(s)} for s in range(args.scenarios)]
    forcings = lever_forcings(settings, {}, args.years, data.num_regions)
    labels = tuple(str(s) for s in range(args.scenarios))

    def together():
        return run_ensemble(sampled.params, initial, drivers, graph, forcings, scenarios=labels, regions=data.names,
                            years=np.arange(args.years)).aggregates["patents"]

    def one_by_one():
        out = np.empty((args.scenarios, args.draws, args.years))
        for s in range(args.scenarios):
            forcing = jax.tree_util.tree_map(lambda x: x[s], forcings)
            for n in range(args.draws):
                take = lambda tree: jax.tree_util.tree_map(lambda x: x[n], tree)  # noqa: E731
                _, traj = simulate(take(sampled.params), take(initial), take(drivers), graph, forcing, record_states=False)
                out[s, n] = np.asarray(traj.observations.patents.sum(-1))
        return out

    started = time.perf_counter()
    np.testing.assert_allclose(together(), one_by_one(), rtol=1e-9)
    print(f"checked equal ({time.perf_counter() - started:.1f} s, compilation included)")
    seconds = {"ensemble": best_time(together, repeats=3), "loop": best_time(one_by_one, repeats=3)}
    region_years = args.scenarios * args.draws * data.num_regions * args.years
    result = dict(
        machine=platform.processor() or platform.machine(), device=str(jax.devices()[0]), regions=data.num_regions,
        scenarios=args.scenarios, draws=args.draws, years=args.years, seconds=seconds,
        region_years_per_second={k: region_years / v for k, v in seconds.items()},
        loop_over_ensemble=seconds["loop"] / seconds["ensemble"],
    )
    for name, value in seconds.items():
        print(f"{name:>9}: {value:.3f} s, {region_years / value:.3g} region-years/s")
    print(f"the loop takes {result['loop_over_ensemble']:.1f} times the ensemble's time")
    write_result(result, "ensemble", args.out)


if __name__ == "__main__":
    main()
