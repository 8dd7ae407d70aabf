"""Calibration on the default data: the whole command, cold and warm, and one gradient vs. finite differences.

    python benchmarks/bench_calibrate.py [--out FILE] [--skip-command] [--compare /other/venv/bin/diffcomm]

Prints and writes JSON (default `benchmarks/results/calibrate_<platform>.json`):

- `diffcomm calibrate` end to end (a subprocess, wall time), first with an empty compilation
  cache (a first run on a new machine) and then again with the cache it filled (every later
  run), with the time of each phase read from its `calibrate.log`;
- with `--compare`, the same command of another installation run right before, so that both
  are timed on the same machine in one sitting (the ratio is what to trust: absolute times on a
  shared machine move with its load);
- seconds to load the data; one reverse-mode gradient of the objective (with the latent
  effects' curvature term) over the free parameters against central finite differences
  (2 P evaluations), with their largest relative difference.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import best_time, write_result

import diffcomm as dc
from diffcomm.laplace import estimate_mask
from diffcomm.loss import Prior, curvature_information, expected_patents, frozen_objective, objective

PHASE = re.compile(r"\] (?P<phase>[\w :(),-]+?): done in (?P<seconds>[\d.]+) s")


def run_command(executable: str, folder: Path, cache: Path | None) -> dict:
    """Wall seconds of `<executable> calibrate` into `folder`, and its phases from the log."""
    args = [executable, "calibrate", "fit.progress=false", f"hydra.run.dir={folder}"]
    if cache is not None:
        args.append(f"runtime.compilation_cache={cache}")
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    log = (folder / "calibrate.log").read_text()
    phases: dict[str, float] = {}
    for m in PHASE.finditer(log):  # the polish's rounds ("polish (L-BFGS), round 3") add up to one phase
        name = re.sub(r", round \d+$", "", m["phase"])
        phases[name] = round(phases.get(name, 0.0) + float(m["seconds"]), 1)
    return dict(wall_seconds=wall, phases=phases)


def gradient_against_finite_differences() -> dict:
    with jax.enable_x64(True):
        config = dc.CalibrateConfig()
        start = time.perf_counter()
        data = dc.load_dataset(config.data)
        load_seconds = time.perf_counter() - start
        params = dc.Params.from_natural(1)
        fit = config.fit
        prior = Prior(params, tuple(fit.free), fit.prior_scale, tuple(fit.region_effects), fit.national_effects)
        import equinox as eqx
        from jax.flatten_util import ravel_pytree

        start = dc.Estimate.start(params, data.num_regions, len(data.years) - 1)
        # over the free parameters (the latent effects held at zero: 2,000 more entries would make
        # the finite differences take minutes, and the gradient's cost does not depend on their number)
        free, fixed = eqx.partition(start, estimate_mask(start, fit.free, (), False))
        flat, unravel = ravel_pytree(free)
        # the objective's gradient holds the curvature term's information fixed, so it is the
        # gradient of the objective with the information frozen at the point (`loss.frozen_objective`),
        # whose values the finite differences take
        information = curvature_information(start, data, prior, expected_patents(start, data)[0])
        loss = jax.jit(lambda x: objective(eqx.combine(unravel(x), fixed), data, prior))
        frozen = jax.jit(lambda x: frozen_objective(eqx.combine(unravel(x), fixed), data, prior, information))
        grad = jax.jit(jax.grad(lambda x: objective(eqx.combine(unravel(x), fixed), data, prior)))
        h = 1e-5

        def finite_differences():
            return jnp.stack([(frozen(flat + e) - frozen(flat - e)) / (2 * h) for e in np.eye(flat.size) * h])

        t_grad, t_loss = best_time(lambda: grad(flat)), best_time(lambda: loss(flat))
        t_fd = best_time(finite_differences, repeats=3)
        g_ad, g_fd = np.asarray(grad(flat)), np.asarray(finite_differences())
        return dict(regions=data.num_regions, years=len(data.years) - 1, free_parameters=int(flat.size),
                    load_seconds=load_seconds, loss_seconds=t_loss, gradient_seconds=t_grad,
                    finite_difference_seconds=t_fd, finite_difference_over_gradient=t_fd / t_grad,
                    gradient_over_loss=t_grad / t_loss,
                    max_relative_difference_fd_vs_ad=float(np.max(np.abs(g_ad - g_fd) / np.maximum(np.abs(g_ad), 1e-8))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-command", action="store_true", help="only the gradient comparison")
    parser.add_argument("--compare", default=None, help="the diffcomm executable of another installation to time first")
    args = parser.parse_args(argv)
    result = dict(device=dict(platform=jax.devices()[0].platform, cpu_count=os.cpu_count(), jax=jax.__version__))
    if not args.skip_command:
        work = Path(tempfile.mkdtemp(prefix="bench_calibrate_"))
        try:
            if args.compare:
                result["compared"] = run_command(args.compare, work / "compared", None)
                print(f"{args.compare} calibrate: {result['compared']['wall_seconds']:.0f} s")
            this = str(Path(sys.executable).with_name("diffcomm"))
            result["cold"] = run_command(this, work / "cold", work / "cache")
            result["warm"] = run_command(this, work / "warm", work / "cache")
            for name in ("cold", "warm"):
                print(f"diffcomm calibrate, {name} compilation cache: {result[name]['wall_seconds']:.0f} s; phases: "
                      + ", ".join(f"{k} {v:.1f} s" for k, v in result[name]["phases"].items()))
            if args.compare:
                for name in ("cold", "warm"):
                    ratio = result["compared"]["wall_seconds"] / result[name]["wall_seconds"]
                    result[f"speedup_{name}"] = ratio
                    print(f"speed-up over the compared installation, {name}: {ratio:.2f}x")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    result.update(gradient_against_finite_differences())
    print(f"data: {result['regions']} regions loaded in {result['load_seconds']:.2f} s")
    print(f"one gradient ({result['free_parameters']} free parameters): {result['gradient_seconds'] * 1e3:.1f} ms; "
          f"loss alone {result['loss_seconds'] * 1e3:.1f} ms; central finite differences: "
          f"{result['finite_difference_seconds'] * 1e3:.0f} ms ({result['finite_difference_over_gradient']:.1f}x the "
          f"gradient); largest relative difference {result['max_relative_difference_fd_vs_ad']:.1e}")
    write_result(result, "calibrate", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
