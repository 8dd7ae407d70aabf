"""From region covariates to the model's drivers.

Each driver is the mean of its standardized terms (`DataConfig.drivers`, `DriverTerm`). Fills of
missing covariates follow each term's `missing` rule and every fill is returned as a note.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..config import DriverTerm
from ..errors import DataError
from ..inputs import NEUTRAL_DRIVERS, Drivers

UNIT_DRIVERS = ("openness", "spawning_share")
"""Drivers that are shares: their standardized value goes through a logistic function into (0, 1)."""


def drivers_from_covariates(
    codes: tuple[str, ...],
    covariates: pd.DataFrame,
    specialization: pd.Series,
    terms: dict[str, list[DriverTerm]],
    *,
    num_domains: int = 1,
) -> tuple[Drivers, list[str]]:
    """Drivers for `codes` from covariates.

    **Arguments:**

    - `codes`: the regions, in order.
    - `covariates`: one row per region code (`load_covariates`).
    - `specialization`: per region code, the specialization measure (`load_specialization`);
      regions without one sit at the mean.
    - `terms`: driver -> its covariate terms.
    - `num_domains`: K; specialization is the same in every domain.

    **Returns:** the drivers (leading axis R) and a note on every fill made. Regions absent from
    the covariate file get every observed driver at the mean (z = 0); drivers without terms sit
    at `NEUTRAL_DRIVERS`.
    """
    notes = []
    table = covariates.reindex(list(codes))
    absent = table.index[table.isna().all(axis=1)]
    if len(absent):
        notes.append(f"{len(absent)} regions have no covariate row; their observed drivers are set to the mean (z = 0)")
    values: dict[str, np.ndarray] = {}
    for driver, driver_terms in terms.items():
        parts = [_term(driver, term, table, covariates.columns, absent, notes) for term in driver_terms]
        with warnings.catch_warnings():  # regions without a covariate row have only NaN parts
            warnings.simplefilter("ignore", RuntimeWarning)
            z = np.nanmean(np.stack(parts), axis=0) if parts else np.zeros(len(codes))
        z = np.nan_to_num(z, nan=0.0)  # regions without any covariate row: the mean, as noted above
        values[driver] = 1.0 / (1.0 + np.exp(-z)) if driver in UNIT_DRIVERS else z
    spec = specialization.reindex(list(codes)).to_numpy(dtype=float)
    if np.isnan(spec).any():
        notes.append(f"specializing: {int(np.isnan(spec).sum())} regions without cluster data set to the mean (z = 0)")
    spec = np.nan_to_num(_standardize(spec), nan=0.0)
    for name, neutral in NEUTRAL_DRIVERS.items():
        if name not in values:
            notes.append(f"{name}: not observed; set to {neutral} for every region")
            values[name] = np.full(len(codes), neutral)
    drivers = Drivers(
        **{k: jnp.asarray(v, dtype=float) for k, v in values.items()},
        specializing=jnp.asarray(np.repeat(spec[:, None], num_domains, axis=1), dtype=float),
    )
    return drivers, notes


def _term(driver: str, term: DriverTerm, table: pd.DataFrame, columns, absent, notes: list[str]) -> np.ndarray:
    """One standardized term, its missing cells filled by its rule (and noted)."""
    if term.column not in columns:
        raise DataError(f"data.drivers.{driver}: column {term.column!r} is not in the covariates {list(columns)}")
    x = table[term.column].to_numpy(dtype=float)
    if term.per_capita:
        x = x / (table["population"].to_numpy(dtype=float) / 1e3)
    lacking = np.isnan(x) & ~table.index.isin(absent)
    if lacking.any():
        if term.missing == "error":
            raise DataError(f"covariates: region {table.index[lacking][0]!r} has no {term.column!r}; "
                            f"set `missing` for this driver term (data.drivers.{driver})")
        fill = 0.0 if term.missing == "zero" else np.nanmean(x)
        notes.append(f"{driver}: {int(lacking.sum())} missing {term.column!r} filled with {term.missing} ({fill:.4g})")
        x = np.where(lacking, fill, x)
    return _standardize(_transform(x, term.transform, f"{driver}.{term.column}"))


def _transform(x: np.ndarray, how: str, name: str) -> np.ndarray:
    if how == "identity":
        return x
    if how == "log":
        if np.any(x[~np.isnan(x)] <= 0):
            raise DataError(f"driver term {name}: `log` needs positive values; use `log1p` or a fill")
        return np.log(x)
    if how == "log1p":
        if np.any(x[~np.isnan(x)] <= -1):
            raise DataError(f"driver term {name}: `log1p` needs values > -1")
        return np.log1p(x)
    raise DataError(f"driver term {name}: unknown transform {how!r}; expected identity, log or log1p")


def _standardize(x: np.ndarray) -> np.ndarray:
    sd = np.nanstd(x)
    return (x - np.nanmean(x)) / (sd if sd > 0 else 1.0)
