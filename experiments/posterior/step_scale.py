"""What the step size after the warm-up costs: from the end of a NUTS run, 100 more transitions of
its chains at the tuned step sizes times each factor, the chains in lockstep as the sampler runs
them (one `vmap`), and for each factor the time, the tree sizes, the longest tree of the chains
per transition (which sets the time), the acceptance rate and the divergent transitions.

    python experiments/posterior/step_scale.py <run folder of diffcomm calibrate inference=nuts> 1.0 1.3 1.6

Reads the run's `checkpoint_nuts` (positions, metric and the draws' step sizes after its draws).
The figures in the README's first section were taken on a run whose draws used dual averaging's
step (before `posterior.step_for_acceptance`); its checkpoint has the layout of that time.
"""

import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import blackjax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from diffcomm.calibrate import calibration_prior, load_calibration  # noqa: E402
from diffcomm.data import load_dataset  # noqa: E402
from diffcomm.posterior import initial_chains  # noqa: E402
from diffcomm.training import load_checkpoint  # noqa: E402
from diffcomm.whitening import coordinates, whitening  # noqa: E402

TRANSITIONS = 100


def main(run: Path, factors: list[float]) -> None:
    calibration = load_calibration(run)
    data = load_dataset(calibration.config.data)
    config = calibration.config.nuts
    coords = coordinates(calibration, centre_national=config.centre_national)
    whiten, _ = whitening(calibration, data, coords, rank=config.rank)
    density = coords.density(whiten, data, calibration_prior(calibration.config))
    dim = ravel_pytree(eqx.partition(calibration.estimate, calibration.mask)[0])[0].size
    like = initial_chains(config, jnp.zeros((config.chains, dim)), int(whiten.global_index.shape[0]))
    arrays, _ = load_checkpoint(run / "checkpoint_nuts", like)
    tuned = arrays.step[:, config.warmup]  # the draws' step sizes
    print("tuned step sizes", np.asarray(tuned).round(3))
    kernel = blackjax.nuts.build_kernel()

    def log_density(v):
        return density(arrays.metric(v))

    @jax.jit
    def transitions(keys, position, step):
        def chain(ks, v, step_size):
            def one(state, k):
                state, info = kernel(k, state, log_density, step_size, jnp.ones(dim), config.max_doublings)
                return state, (info.num_integration_steps, info.acceptance_rate, info.is_divergent)

            return jax.lax.scan(one, blackjax.nuts.init(v, log_density), ks)[1]

        return jax.vmap(chain)(keys, position, step)

    for factor in factors:
        keys = jax.vmap(lambda k: jax.random.split(k, TRANSITIONS))(jax.random.split(jax.random.key(7), config.chains))
        jax.block_until_ready(transitions(keys[:, :2], arrays.position, tuned * factor))  # compiled before timing
        start = time.perf_counter()
        steps, acceptance, divergent = jax.block_until_ready(transitions(keys, arrays.position, tuned * factor))
        seconds = time.perf_counter() - start
        steps = np.asarray(steps)
        sizes = dict(zip(*(a.tolist() for a in np.unique(steps, return_counts=True))))
        print(f"x{factor}: {seconds:.0f} s for {TRANSITIONS} transitions; tree mean {steps.mean():.1f}, longest of the "
              f"chains {steps.max(0).mean():.1f}, acceptance {np.asarray(acceptance).mean():.2f}, divergent "
              f"{int(np.asarray(divergent).sum())}, tree sizes {sizes}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [float(f) for f in sys.argv[2:]] or [1.0, 1.3])
