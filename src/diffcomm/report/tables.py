"""Tables a run writes: trajectories (streamed), per-archetype summaries, fitted parameters, fit.

The tidy trajectory table can hold hundreds of millions of rows (1e5 regions x 50 years x 22
variables); it is never built whole in memory: `write_trajectories` writes it one year at a
time with pyarrow, as CSV or as Parquet (columnar and compressed, for large runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ..calibrate import Calibration
from ..data import Dataset
from ..effects import region_effect_scales
from ..laplace import Laplace
from ..observation import negative_binomial_deviance
from ..params import Params
from ..scenario import Scenario
from ..simulate import Trajectory
from ..training import check_stop

REGION_VARIABLES = ("development", "local_connectedness", "catchment_share")
DOMAIN_VARIABLES = ("active", "passive", "overlap", "knowledge", "internationalization")
OBSERVED_VARIABLES = ("patents", "coinvention_share", "nonlocal_share", "exports_intensity")
TRAJECTORY_COLUMNS = ("region", "archetype", "year", "variable", "domain", "value")


def trajectory_arrays(traj: Trajectory) -> dict[str, np.ndarray]:
    """Name -> array (T, R) or (T, R, K) for every recorded variable."""
    arrays = {name: np.asarray(getattr(traj.observations, name)) for name in OBSERVED_VARIABLES}
    arrays["development"] = np.asarray(traj.observations.development)
    if traj.regions is not None:
        for name in REGION_VARIABLES + DOMAIN_VARIABLES:
            arrays[name] = np.asarray(getattr(traj.regions, name))
    return arrays


def _year_table(arrays: dict[str, np.ndarray], t: int, year: int, regions: pa.Array, archetypes: pa.Array,
                archetype_of: np.ndarray) -> pa.Table:
    """The tidy rows of one year: every variable, region (and domain). Text columns are
    dictionary-encoded (an index per row into the names), which keeps a year of 1e5 regions cheap."""
    variables = pa.array(list(arrays))
    columns: dict[str, list] = {name: [] for name in ("region", "variable", "domain", "value")}
    for v, values in enumerate(arrays.values()):
        one = values[t]
        domains = one.shape[1] if one.ndim == 2 else 1
        index = np.repeat(np.arange(one.shape[0], dtype=np.int32), domains)
        columns["region"].append(index)
        columns["variable"].append(np.full(index.size, v, dtype=np.int32))
        columns["domain"].append(np.tile(np.arange(domains), one.shape[0]) if one.ndim == 2 else np.full(index.size, -1))
        columns["value"].append(one.reshape(-1))
    region = np.concatenate(columns["region"])
    domain = np.concatenate(columns["domain"])
    return pa.table({
        "region": pa.DictionaryArray.from_arrays(pa.array(region), regions),
        "archetype": pa.DictionaryArray.from_arrays(pa.array(archetype_of[region].astype(np.int32)), archetypes),
        "year": pa.array(np.full(region.size, year, dtype=np.int64)),
        "variable": pa.DictionaryArray.from_arrays(pa.array(np.concatenate(columns["variable"])), variables),
        "domain": pa.array(domain, mask=domain < 0),  # empty for region-level variables
        "value": pa.array(np.concatenate(columns["value"])),
    })


def write_trajectories(path: Path, scenario: Scenario, traj: Trajectory, *, form: str = "csv", first_year: int = 1) -> int:
    """Write the tidy table, one row per region x year x variable (x domain), a year at a time.

    Columns: `region, archetype, year, variable, domain, value`; `domain` is empty for
    region-level variables. `form`: `csv` or `parquet`. Returns the number of rows written.
    """
    arrays = trajectory_arrays(traj)
    num_years = next(iter(arrays.values())).shape[0]
    regions, archetypes = pa.array(list(scenario.region_names)), pa.array(list(scenario.archetype_names))
    rows, writer = 0, None
    try:
        for t in range(num_years):
            check_stop()  # a year at a time: Ctrl-C is honoured within one
            table = _year_table(arrays, t, first_year + t, regions, archetypes, np.asarray(scenario.archetype))
            if writer is None:
                writer = (pq.ParquetWriter(path, table.schema) if form == "parquet" else
                          pa_csv.CSVWriter(path, table.schema, write_options=pa_csv.WriteOptions(quoting_style="needed")))
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def archetype_summary(scenario: Scenario, traj: Trajectory) -> pd.DataFrame:
    """Per archetype: mean of each variable in the first and last year (domains summed)."""
    arrays = trajectory_arrays(traj)
    rows = []
    for index, name in enumerate(scenario.archetype_names):
        members = scenario.archetype == index
        row = {"archetype": name, "regions": int(members.sum())}
        for variable, values in arrays.items():
            per_region = values.sum(-1) if values.ndim == 3 and variable in ("active", "passive", "knowledge") else values
            per_region = per_region.mean(-1) if per_region.ndim == 3 else per_region
            row[f"{variable}_first"] = float(per_region[0, members].mean())
            row[f"{variable}_last"] = float(per_region[-1, members].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def parameter_table(approx: Laplace, domains: tuple[str, ...] = ("all",)) -> pd.DataFrame:
    """Fitted parameters on their natural scale: value, delta-method standard error, the 95%
    interval mapped from the unconstrained scale (so it respects each constraint), and the domain
    of a per-domain parameter (`domains`, by index; empty for a shared parameter)."""
    docs = {name: meta["doc"] for name, meta in Params.describe().items()}
    lower, upper = approx.interval(0.95)

    def domain(name: str) -> str:
        return domains[int(name.split("[")[1].rstrip("]"))] if "[" in name else ""

    return pd.DataFrame({
        "parameter": approx.parameter_names, "domain": [domain(n) for n in approx.parameter_names], "value": approx.natural,
        "se": approx.natural_se, "lower95": lower, "upper95": upper,
        "meaning": [docs.get(name.split("[")[0], "") for name in approx.parameter_names],
    })


def region_effects_table(calibration: Calibration, data: Dataset) -> pd.DataFrame:
    """Each region's latent effects: the standardized estimate, its posterior sd, and the effect
    itself (`scale x estimate`, on the log scale of what it moves), one row per region."""
    approx, p = calibration.laplace, calibration.params.natural()
    frame = pd.DataFrame({"region": data.codes, "name": data.names})
    if not approx.region_effects:
        return frame
    scales = np.asarray(region_effect_scales(p, tuple(approx.region_effects)))
    sd = approx.region_sd()
    for e, name in enumerate(approx.region_effects):
        frame[f"{name}_z"] = approx.region_mean[:, e]
        frame[f"{name}_z_sd"] = sd[:, e]
        frame[name] = scales[e] * approx.region_mean[:, e]
    return frame


def fit_summary(observed: np.ndarray, fitted: np.ndarray, dispersion: float) -> dict:
    """Deviance explained against two nulls, and per-region error quantiles."""
    constant = np.full_like(observed, np.nanmean(observed))
    region_mean = np.broadcast_to(np.nanmean(observed, axis=0, keepdims=True), observed.shape)
    d_model = negative_binomial_deviance(observed, fitted, dispersion)
    log_error = np.nanmean(np.abs(np.log1p(fitted) - np.log1p(observed)), axis=0)
    rel_error = np.nanmean(np.abs(fitted - observed) / np.maximum(observed, 1.0), axis=0)
    return dict(
        deviance=d_model,
        deviance_explained_vs_constant=1 - d_model / negative_binomial_deviance(observed, constant, dispersion),
        deviance_explained_vs_region_mean=1 - d_model / negative_binomial_deviance(observed, region_mean, dispersion),
        region_abs_log_error_quantiles={q: float(np.nanquantile(log_error, q)) for q in (0.1, 0.5, 0.9)},
        region_relative_error_quantiles={q: float(np.nanquantile(rel_error, q)) for q in (0.1, 0.5, 0.9)},
    )
