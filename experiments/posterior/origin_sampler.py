"""The sampler's numbers at each origin of a rolling-origin NUTS run, read from its checkpoints.

    python experiments/posterior/origin_sampler.py <run folder> <out.csv>

For `diffcomm calibrate evaluation.rolling_origin=true inference=nuts hydra.run.dir=<run folder>`:
per origin, the draws' step and mean tree, the lockstep leapfrog steps of warm-up and draws, the
divergent transitions, R-hat and bulk ESS of each driver weight and of the buzz-quality scale, and
the worst R-hat and least bulk ESS over all parameters. Each origin's fit is resumed from its
checkpoint (seconds), only to lay out the draws. The sampler's checkpoints hold one step-size
adaptation for all chains since 2026-12-07 (one per chain before); `sampler.csv` of
`rolling_converged/` was read from checkpoints of the earlier layout, with the code of commit 76d4974.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from diffcomm.calibrate import calibrate  # noqa: E402
from diffcomm.cli import to_typed  # noqa: E402
from diffcomm.data.dataset import load_dataset  # noqa: E402
from diffcomm.laplace import _layout  # noqa: E402
from diffcomm.posterior import initial_chains  # noqa: E402
from diffcomm.report.posterior import DRIVER_WEIGHTS  # noqa: E402
from diffcomm.training import load_checkpoint  # noqa: E402


def origin_row(run: Path, config, data, origin: int) -> dict:
    fitted = calibrate(data.through(origin), config, checkpoint=run / f"checkpoint_origin_{origin}", phase=f"origin {origin}: ")
    free = eqx.partition(fitted.estimate, fitted.mask)[0]
    dim = ravel_pytree(free)[0].size
    global_index, _, names, _ = _layout(free)
    layout = initial_chains(config.nuts, jnp.zeros((config.nuts.chains, dim)), len(global_index))
    arrays, _ = load_checkpoint(run / f"checkpoint_origin_{origin}_nuts", layout)
    warmup = config.nuts.warmup
    leapfrogs, divergent = np.asarray(arrays.leapfrogs), np.asarray(arrays.divergent)
    draws = az.convert_to_inference_data(np.asarray(arrays.draws))  # (chain, draw, entry)
    rhat, ess = np.asarray(az.rhat(draws).x), np.asarray(az.ess(draws).x)
    row = dict(origin=origin, step=float(np.asarray(arrays.step)[0, warmup]),
               leapfrogs_per_draw=float(leapfrogs[:, warmup:].mean()),
               lockstep_warmup=int(leapfrogs.max(0)[:warmup].sum()), lockstep_draws=int(leapfrogs.max(0)[warmup:].sum()),
               divergent_warmup=int(divergent[:, :warmup].sum()), divergent_draws=int(divergent[:, warmup:].sum()))
    for name in [*DRIVER_WEIGHTS, "buzz_quality_scale"]:
        at = global_index[names.index(name)]
        row[f"rhat_{name}"], row[f"ess_{name}"] = round(float(rhat[at]), 4), int(ess[at])
    row.update(worst_rhat=round(float(rhat.max()), 4), least_ess=int(ess.min()))
    return row


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    config = to_typed(OmegaConf.load(run / ".hydra/config.yaml"), "calibrate")
    data = load_dataset(config.data)
    rows = [origin_row(run, config, data, origin) for origin in config.evaluation.origins]
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
