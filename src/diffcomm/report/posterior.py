"""What a NUTS run writes: its draws as ArviZ `InferenceData`, the diagnostics table, the Laplace
intervals beside the NUTS ones, and ArviZ's trace, rank and pair plots of the driver weights.

ArviZ does the convergence diagnostics (rank-normalised split R-hat, bulk and tail ESS, Vehtari
et al. 2021) and the plots; writing them by hand would only add a place for them to be wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

if TYPE_CHECKING:
    from ..calibrate import Calibration
    from ..data import Dataset
    from ..posterior import Posterior

DRIVER_WEIGHTS = ("connecting_weight", "educating_weight", "migrating_weight", "specializing_weight", "amenity_weight")
COLUMNS = ["parameter", "mean", "sd", "q05", "q95", "rhat", "ess_bulk", "ess_tail"]


def _arviz():
    """ArviZ, imported without its notices about a coming release (they would fill every run's log)."""
    import logging
    import warnings

    logging.getLogger("arviz").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz

    return arviz


def inference_data(posterior: Posterior, data: Dataset):
    """The draws as `arviz.InferenceData`: each free parameter on its natural scale (named as in
    `params.csv`), the national innovations by year, each region effect by region code; the
    sampler's log density, divergences, tree sizes, acceptance and step sizes in `sample_stats`."""
    az = _arviz()

    names = posterior.parameter_names
    values = {name: posterior.natural[..., j] for j, name in enumerate(names)}
    dims, coords = {}, {}
    national = [i for i, name in enumerate(posterior.names) if name.startswith("national_innovation")]
    if national:
        values["national_innovation"] = posterior.draws[..., posterior.global_index[national]]
        dims["national_innovation"], coords["year"] = ["year"], [int(data.years[0]) + 1 + t for t in range(len(national))]
    for e, name in enumerate(posterior.region_effects):
        values[name] = posterior.draws[..., posterior.region_index[:, e]]
        dims[name] = ["region"]
    if posterior.region_effects:
        coords["region"] = list(data.codes)
    step_size = np.broadcast_to(posterior.step_size[:, None], posterior.acceptance.shape)
    stats = dict(lp=posterior.log_density, diverging=posterior.divergent, n_steps=posterior.leapfrogs,
                 acceptance_rate=posterior.acceptance, step_size=step_size)
    return az.from_dict(posterior=values, sample_stats=stats, dims=dims, coords=coords)


def diagnostics_table(idata) -> pd.DataFrame:
    """One row per scalar: `parameter,mean,sd,q05,q95,rhat,ess_bulk,ess_tail` (per-year and
    per-region ones named `name[year]`, `name[code]`)."""
    az = _arviz()

    table = az.summary(idata, kind="all", round_to="none",
                       stat_funcs={"q05": lambda x: np.quantile(x, 0.05), "q95": lambda x: np.quantile(x, 0.95)})
    table = table.rename(columns={"r_hat": "rhat"}).rename_axis("parameter").reset_index()
    return table[COLUMNS]


def laplace_against_nuts(calibration: Calibration, diagnostics: pd.DataFrame) -> pd.DataFrame:
    """Per free parameter, the Laplace mean and 90% interval beside NUTS's, and the ratio of the
    interval widths (NUTS / Laplace)."""
    approx = calibration.laplace
    low, high = approx.interval(0.9)
    laplace = pd.DataFrame(dict(parameter=approx.parameter_names, laplace_mean=approx.natural, laplace_q05=low, laplace_q95=high))
    nuts = diagnostics.rename(columns={"mean": "nuts_mean", "q05": "nuts_q05", "q95": "nuts_q95"})
    table = laplace.merge(nuts[["parameter", "nuts_mean", "nuts_q05", "nuts_q95"]], on="parameter")
    table["width_ratio"] = (table.nuts_q95 - table.nuts_q05) / (table.laplace_q95 - table.laplace_q05)
    return table


def plot_diagnostics(idata, folder) -> list[str]:
    """`trace.png`, `rank.png` and `pair.png` of the driver weights that were fitted, into `folder`."""
    az = _arviz()

    weights = [name for name in DRIVER_WEIGHTS if name in idata.posterior]
    if not weights:
        return []
    written = []
    for name, draw in (("trace.png", lambda: az.plot_trace(idata, var_names=weights, compact=False)),
                       ("rank.png", lambda: az.plot_rank(idata, var_names=weights)),
                       ("pair.png", lambda: az.plot_pair(idata, var_names=weights, kind="scatter", divergences=True,
                                                         scatter_kwargs=dict(alpha=0.35, s=10)))):
        draw()
        plt.gcf().tight_layout()
        plt.gcf().savefig(folder / name, dpi=110, bbox_inches="tight")
        plt.close("all")
        written.append(name)
    return written
