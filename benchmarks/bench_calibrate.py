"""Calibration on the default data: time to converge, and one gradient vs. finite differences.

    python benchmarks/bench_calibrate.py [--out FILE] [--skip-fit]

Prints and writes JSON (default `benchmarks/results/calibrate_<platform>.json`): seconds to load
the data; seconds for one reverse-mode gradient of the loss over the free parameters against
estimating the same gradient by central finite differences (2 P loss evaluations), with the
largest relative difference between the two; and the calibration's steps, seconds and final
loss with the default settings (`conf/calibrate.yaml`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, write_result  # noqa: E402

from diffcomm.calibrate import free_filter  # noqa: E402
from diffcomm.commands import fit_dataset, load_dataset  # noqa: E402
from diffcomm.config import CalibrateConfig, build_params, conf_dir, to_typed  # noqa: E402
from diffcomm.loss import CalibrationInputs, calibration_loss  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-fit", action="store_true", help="only the gradient comparison")
    args = parser.parse_args(argv)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = to_typed(compose(config_name="calibrate", overrides=["fit.progress=false"]), CalibrateConfig)

    start = time.perf_counter()
    dataset = load_dataset(cfg.data)
    load_seconds = time.perf_counter() - start
    inputs = CalibrationInputs.from_dataset(dataset)
    params = build_params(cfg.model)
    free, fixed = eqx.partition(params, free_filter(params, cfg.fit.free))
    flat, unravel = ravel_pytree(free)

    loss = jax.jit(lambda x: calibration_loss(eqx.combine(unravel(x), fixed), inputs))
    grad = jax.jit(jax.grad(lambda x: calibration_loss(eqx.combine(unravel(x), fixed), inputs)))
    h = 1e-5

    def finite_differences():
        basis = np.eye(flat.size) * h
        return jnp.stack([(loss(flat + e) - loss(flat - e)) / (2 * h) for e in basis])

    t_grad = best_time(lambda: grad(flat))
    t_loss = best_time(lambda: loss(flat))
    t_fd = best_time(finite_differences, repeats=3)
    g_ad, g_fd = np.asarray(grad(flat)), np.asarray(finite_differences())
    rel = float(np.max(np.abs(g_ad - g_fd) / np.maximum(np.abs(g_ad), 1e-8)))
    result = dict(
        device=dict(platform=jax.devices()[0].platform, cpu_count=os.cpu_count(), jax=jax.__version__),
        regions=dataset.num_regions, years=int(dataset.years[-1] - dataset.years[0]), free_parameters=int(flat.size),
        load_seconds=load_seconds, loss_seconds=t_loss, gradient_seconds=t_grad, finite_difference_seconds=t_fd,
        finite_difference_over_gradient=t_fd / t_grad, gradient_over_loss=t_grad / t_loss,
        max_relative_difference_fd_vs_ad=rel,
    )
    print(f"data: {dataset.num_regions} regions loaded in {load_seconds:.2f} s")
    print(f"one gradient ({flat.size} free parameters): {t_grad * 1e3:.1f} ms; loss alone {t_loss * 1e3:.1f} ms; "
          f"central finite differences: {t_fd * 1e3:.0f} ms ({t_fd / t_grad:.1f}x the gradient); "
          f"largest relative difference {rel:.1e}")
    if not args.skip_fit:
        start = time.perf_counter()
        adam, final, approx, _ = fit_dataset(cfg, dataset, checkpoint=None)
        seconds = time.perf_counter() - start
        result.update(
            fit_seconds=seconds, adam_steps=adam.steps, adam_seconds=adam.seconds, adam_converged=adam.converged,
            restarts=cfg.fit.restarts, polish_steps=final.steps if final is not adam else 0,
            loss_per_observation=float(final.best_losses[final.best_restart]),
            laplace_positive_definite=approx.positive_definite,
        )
        print(f"calibration: {adam.steps} Adam steps x {cfg.fit.restarts} restarts in {adam.seconds:.0f} s, then "
              f"{result['polish_steps']} L-BFGS steps; {seconds:.0f} s in all with compilation and the Laplace "
              f"Hessian; loss per observation {result['loss_per_observation']:.4f}")
    write_result(result, "calibrate", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
