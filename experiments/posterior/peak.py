"""How the NUTS draws' log density compares with the log joint density at the MAP.

    .venv/bin/python experiments/posterior/peak.py <run folder of diffcomm calibrate inference=nuts>

Prints the log joint (likelihood and priors, `loss.log_joint`) at the calibration's estimate,
each region effect at its conditional mode, beside the draws' log density (the same function:
the sampler's coordinates are a linear map of the estimate's), and the gap that a Gaussian
posterior about the MAP would give: half the number of sampled coordinates, with sd the square
root of that half.
"""

import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from diffcomm.calibrate import calibration_prior, load_calibration  # noqa: E402
from diffcomm.data import load_dataset  # noqa: E402
from diffcomm.loss import log_joint  # noqa: E402
from diffcomm.report.posterior import _arviz  # noqa: E402


def main(run: Path) -> None:
    calibration = load_calibration(run)
    data = load_dataset(calibration.config.data)
    at_map = float(log_joint(calibration.estimate, data, calibration_prior(calibration.config)))
    lp = _arviz().from_netcdf(run / "posterior.nc").sample_stats["lp"].values
    dim = calibration.posterior.shape[-1]
    print(f"log joint at the MAP: {at_map:.1f}")
    print(f"draws: mean {lp.mean():.1f}, 5-95% {np.quantile(lp, 0.05):.1f} to {np.quantile(lp, 0.95):.1f}, "
          f"highest {lp.max():.1f}")
    print(f"below the MAP by {at_map - lp.mean():.0f} on average (at least {at_map - lp.max():.0f}); a Gaussian posterior "
          f"about the MAP in {dim} coordinates: {dim / 2:.0f} +/- {np.sqrt(dim / 2):.0f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
