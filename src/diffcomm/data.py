"""Observed data: validated loaders, covariates mapped to drivers, and the calibration data set.

Every loader checks its file and raises :class:`DataError` naming the file, the row (as a line
number of the file) or column, and what was expected. Missing cells are kept as NaN and masked
downstream, never turned into zeros; fills of missing covariates are explicit in the mapping
and recorded in `Dataset.notes`.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float

from .model import Drivers, Graph

DATA_DIR = Path(__file__).parent / "datasets"
CODE_PATTERN = re.compile(r"^\d{5}$")


class DataError(ValueError):
    """A data file that cannot be used; the message names the file, row or column."""


# --------------------------------------------------------------------------------------------
# Reading and validating tables
# --------------------------------------------------------------------------------------------


def resolve(path: str | Path) -> Path:
    """A path as given, or relative to the shipped data folder (e.g. `us_cbsa/patents.csv`)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    return DATA_DIR / path


def read_table(path: str | Path, columns: dict[str, str]) -> pd.DataFrame:
    """Read a CSV and check the named columns.

    **Arguments:**

    - `path`: the file.
    - `columns`: column name -> kind: `code` (5-digit region code), `year` (integer), `count`
      (non-negative integer, may be empty), `number` (may be empty), `text`.

    **Returns:** a DataFrame with those columns converted; empty numeric cells are NaN.
    Row labels are the line numbers of the file (the header is line 1).
    """
    path = resolve(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected a header with columns {list(columns)}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV file ({str(error).splitlines()[0]})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header with columns {list(columns)}") from None
    frame.columns = [c.strip() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, frame.columns, n=1)
            hints.append(f"{name!r}" + (f" (found {close[0]!r}: misspelt?)" if close else ""))
        raise DataError(f"{path}: missing column(s) {', '.join(hints)}; the file has {list(frame.columns)}")
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    frame.index = pd.RangeIndex(2, len(frame) + 2)  # file line numbers
    out = pd.DataFrame(index=frame.index)
    for name, kind in columns.items():
        out[name] = _convert(path, frame[name].str.strip(), name, kind)
    return out


def _convert(path: Path, raw: pd.Series, name: str, kind: str) -> pd.Series:
    if kind == "text":
        return raw
    if kind == "code":
        bad = ~raw.str.match(CODE_PATTERN)
        if bad.any():
            line = bad.idxmax()
            raise DataError(
                f"{path}:{line}: column {name!r}: expected a 5-digit region code (leading zeros kept), got {raw[line]!r}"
            )
        return raw
    empty = raw == ""
    values = pd.to_numeric(raw.where(~empty), errors="coerce")
    bad = values.isna() & ~empty
    if bad.any():
        line = bad.idxmax()
        raise DataError(f"{path}:{line}: column {name!r}: expected a number, got {raw[line]!r}")
    if kind == "year":
        if empty.any():
            raise DataError(f"{path}:{empty.idxmax()}: column {name!r}: expected a year, got an empty cell")
        if (values % 1 != 0).any():
            line = (values % 1 != 0).idxmax()
            raise DataError(f"{path}:{line}: column {name!r}: expected an integer year, got {raw[line]!r}")
        return values.astype(int)
    if kind == "count":
        negative = values < 0
        if negative.any():
            line = negative.idxmax()
            raise DataError(f"{path}:{line}: column {name!r}: expected a non-negative count, got {raw[line]!r}")
        fractional = (values % 1 != 0) & values.notna()
        if fractional.any():
            line = fractional.idxmax()
            raise DataError(f"{path}:{line}: column {name!r}: expected an integer count, got {raw[line]!r}")
    if kind in ("count", "number") and np.isinf(values).any():
        line = np.isinf(values).idxmax()
        raise DataError(f"{path}:{line}: column {name!r}: expected a finite number, got {raw[line]!r}")
    return values.astype(float)


def _no_duplicates(path: Path, frame: pd.DataFrame, keys: list[str]) -> None:
    duplicated = frame.duplicated(keys, keep=False)
    if duplicated.any():
        lines = list(frame.index[duplicated][:2])
        plain = lambda v: v.item() if isinstance(v, np.generic) else v  # noqa: E731
        values = ", ".join(f"{k}={plain(frame.loc[lines[0], k])!r}" for k in keys)
        raise DataError(f"{resolve(path)}: duplicate key ({values}) on lines {lines[0]} and {lines[1]}")


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatentPanel:
    """Patents per region and year: `counts[t, r]`, NaN where the panel has no cell."""

    codes: tuple[str, ...]
    names: tuple[str, ...]
    years: np.ndarray  # (T,) consecutive years
    counts: np.ndarray  # (T, R)

    def window(self, first: int, last: int) -> "PatentPanel":
        keep = (self.years >= first) & (self.years <= last)
        if not keep.any():
            raise DataError(f"no patent data between {first} and {last}; the panel covers {self.years[0]}-{self.years[-1]}")
        return PatentPanel(self.codes, self.names, self.years[keep], self.counts[keep])


def load_patents(
    path: str | Path = "us_cbsa/patents.csv",
    *,
    region: str = "cbsa_code",
    year: str = "year",
    count: str = "patents",
    name: str | None = "cbsa_name",
) -> PatentPanel:
    """A long CSV of (region, year, count) as a region x year panel.

    Years between the first and last become consecutive; cells absent from the file are NaN.
    """
    columns = {region: "code", year: "year", count: "count"}
    if name:
        columns[name] = "text"
    frame = read_table(path, columns)
    _no_duplicates(path, frame, [region, year])
    codes = tuple(sorted(frame[region].unique()))
    names = frame.groupby(region)[name].first().reindex(codes) if name else pd.Series(codes, index=codes)
    years = np.arange(frame[year].min(), frame[year].max() + 1)
    table = frame.pivot(index=year, columns=region, values=count).reindex(index=years, columns=list(codes))
    return PatentPanel(codes, tuple(names.astype(str)), years, table.to_numpy(dtype=float))


COVARIATE_COLUMNS = {
    "cbsa_code": "code",
    "population": "number",
    "share_bachelor_plus": "number",
    "newcomers_total": "number",
    "median_household_income": "number",
    "newcomers_baplus_per_1k": "number",
    "univ_rd_total": "number",
    "univ_rd_business_funded": "number",
    "exports_musd_2017": "number",
    "exports_share_gdp_2017": "number",
    "vc_musd_per_1m_2015_17": "number",
    "vc_deals_2015_17": "number",
    "patent_complexity": "number",
}


def load_covariates(
    path: str | Path = "us_cbsa/covariates.csv",
    columns: dict[str, str] | None = None,
    *,
    on_duplicate: str = "error",
    notes: list[str] | None = None,
) -> pd.DataFrame:
    """Region covariates indexed by region code (first column named in `columns`).

    `on_duplicate`: `error` (default), or `first` to keep the first row of a repeated region;
    each region so resolved is appended to `notes`.
    """
    columns = columns or COVARIATE_COLUMNS
    frame = read_table(path, columns)
    key = next(iter(columns))
    if on_duplicate == "first":
        repeated = frame[key][frame.duplicated(key)].unique()
        for code in repeated:
            lines = list(frame.index[frame[key] == code])
            if notes is not None:
                notes.append(f"covariates: region {code} appears on lines {lines}; kept line {lines[0]}")
        frame = frame.drop_duplicates(key, keep="first")
    elif on_duplicate != "error":
        raise ValueError(f"on_duplicate must be 'error' or 'first', got {on_duplicate!r}")
    _no_duplicates(path, frame, [key])
    return frame.set_index(key)


def load_specialization(path: str | Path = "us_cbsa/clusters_2016.csv", *, top: int = 3) -> pd.Series:
    """Per region: mean log location quotient of its `top` strongest traded clusters (employment > 0)."""
    frame = read_table(path, {"cbsa_code": "code", "cluster_code": "count", "employment": "count", "location_quotient": "number"})
    _no_duplicates(path, frame, ["cbsa_code", "cluster_code"])
    present = frame[(frame.employment > 0) & (frame.location_quotient > 0)]
    strongest = present.sort_values("location_quotient", ascending=False).groupby("cbsa_code").head(top)
    return np.log(strongest.groupby("cbsa_code").location_quotient.mean()).rename("specialization")


def load_linkage_counts(path: str | Path = "us_msa_transfers/by_msa_period.csv", *, period: str = "2000-2023") -> pd.DataFrame:
    """Local and non-local connections per region in one period: columns `local`, `non_local`."""
    frame = read_table(
        path,
        {"cbsa_code": "code", "period": "text", "intracity_transfers": "count", "intercity_out": "count", "intercity_in": "count"},
    )
    _no_duplicates(path, frame, ["cbsa_code", "period"])
    chosen = frame[frame.period == period]
    if chosen.empty:
        raise DataError(f"{resolve(path)}: no rows for period {period!r}; periods present: {sorted(frame.period.unique())}")
    return pd.DataFrame(
        {"local": chosen.intracity_transfers.to_numpy(), "non_local": (chosen.intercity_out + chosen.intercity_in).to_numpy()},
        index=chosen.cbsa_code.to_numpy(),
    )


def load_edges(
    path: str | Path = "us_msa_transfers/intercity_edges.csv",
    *,
    known_codes: set[str],
    period: str | None = "2000-2023",
) -> pd.DataFrame:
    """A weighted, directed edge list `source, target, weight` between known regions.

    Every code must be in `known_codes` (an unknown code is an error naming its line).
    """
    frame = read_table(path, {"period": "text", "source_cbsa": "code", "target_cbsa": "code", "transfers": "count"})
    for column in ("source_cbsa", "target_cbsa"):
        unknown = ~frame[column].isin(known_codes)
        if unknown.any():
            line = unknown.idxmax()
            raise DataError(
                f"{resolve(path)}:{line}: column {column!r}: unknown region code {frame.loc[line, column]!r} "
                "(not in the patent panel, the covariates or the linkage counts)"
            )
    if period is not None:
        frame = frame[frame.period == period]
    _no_duplicates(path, frame, ["period", "source_cbsa", "target_cbsa"])
    return frame.rename(columns={"source_cbsa": "source", "target_cbsa": "target", "transfers": "weight"})[
        ["source", "target", "weight"]
    ].dropna()


@dataclass(frozen=True)
class DomainPanel:
    """A multi-domain panel: `inventors[p, s, k]` for period p, state s, domain k (NaN when suppressed)."""

    states: tuple[str, ...]
    domains: tuple[str, ...]
    periods: np.ndarray
    inventors: np.ndarray
    foreign_origin_share: np.ndarray  # in [0, 1]
    onshored_patents: np.ndarray


def load_state_tech(path: str | Path = "us_state_tech/panel.csv") -> DomainPanel:
    """The state x technology-group panel (inventors, foreign-origin share, onshored patents)."""
    frame = read_table(
        path,
        {"state": "text", "tech_group": "text", "period_start": "year", "inventors": "count",
         "foreign_origin_inventor_pct": "number", "onshored_patents": "count"},
    )
    _no_duplicates(path, frame, ["state", "tech_group", "period_start"])
    pct = frame.foreign_origin_inventor_pct
    if ((pct < 0) | (pct > 100)).any():
        line = ((pct < 0) | (pct > 100)).idxmax()
        raise DataError(f"{resolve(path)}:{line}: column 'foreign_origin_inventor_pct': expected a percentage in [0, 100], got {pct[line]}")
    states, domains = sorted(frame.state.unique()), sorted(frame.tech_group.unique())
    periods = np.sort(frame.period_start.unique())
    index = pd.MultiIndex.from_product([periods, states, domains])

    def cube(column):
        series = frame.set_index(["period_start", "state", "tech_group"])[column].reindex(index)
        return series.to_numpy(dtype=float).reshape(len(periods), len(states), len(domains))

    return DomainPanel(tuple(states), tuple(domains), periods, cube("inventors"),
                       cube("foreign_origin_inventor_pct") / 100.0, cube("onshored_patents"))


# --------------------------------------------------------------------------------------------
# Covariates -> drivers
# --------------------------------------------------------------------------------------------


@dataclass
class DriverTerm:
    """One covariate feeding a driver.

    `transform`: identity, log or log1p, applied after dividing by population in thousands if
    `per_capita` (a value per 1,000 residents; for R&D in thousand USD, USD per resident).
    `missing`: what a missing cell means: `zero` (the quantity is absent, e.g. no university R&D
    reported), `mean` (unknown: the mean of the observed values), or `error`.
    """

    column: str
    transform: str = "identity"
    per_capita: bool = False
    missing: str = "error"


@dataclass
class DriverMapping:
    """How region covariates become drivers. Each driver is the mean of its standardized terms.

    `scale`: `zscore` for the z-scored drivers; `unit` maps the standardized value through a
    logistic function into (0, 1) (openness, spawning share). Drivers without terms sit at
    `constants` (unobserved: documented as such).
    """

    terms: dict[str, list[DriverTerm]] = field(default_factory=dict)
    unit_drivers: list[str] = field(default_factory=lambda: ["openness", "spawning_share"])
    constants: dict[str, float] = field(default_factory=dict)
    specialization_missing: str = "mean"


def drivers_from_covariates(
    codes: tuple[str, ...],
    covariates: pd.DataFrame,
    specialization: pd.Series,
    mapping: DriverMapping,
    *,
    num_domains: int = 1,
) -> tuple[Drivers, list[str]]:
    """Drivers for `codes` from covariates; returns the drivers and notes on every fill made.

    Regions absent from the covariate file get every observed driver at the mean (z = 0), and
    are listed in the notes.
    """
    notes = []
    table = covariates.reindex(list(codes))
    absent = table.index[table.isna().all(axis=1)]
    if len(absent):
        notes.append(f"{len(absent)} regions have no covariate row; their observed drivers are set to the mean (z = 0)")
    values: dict[str, np.ndarray] = {}
    for driver, terms in mapping.terms.items():
        parts = []
        for term in terms:
            if term.column not in covariates.columns:
                raise DataError(f"driver mapping: {driver!r} uses column {term.column!r}, not in the covariates {list(covariates.columns)}")
            x = table[term.column].to_numpy(dtype=float)
            if term.per_capita:
                x = x / (table["population"].to_numpy(dtype=float) / 1e3)
            lacking = np.isnan(x) & ~table.index.isin(absent)
            if lacking.any():
                if term.missing == "error":
                    first = table.index[lacking][0]
                    raise DataError(f"covariates: region {first!r} has no {term.column!r}; set `missing` for this driver term")
                fill = 0.0 if term.missing == "zero" else np.nanmean(x)
                notes.append(f"{driver}: {int(lacking.sum())} missing {term.column!r} filled with {term.missing} ({fill:.4g})")
                x = np.where(lacking, fill, x)
            x = _transform(x, term.transform, f"{driver}.{term.column}")
            parts.append(_standardize(x))
        with warnings.catch_warnings():  # regions without a covariate row have only NaN parts
            warnings.simplefilter("ignore", RuntimeWarning)
            z = np.nanmean(np.stack(parts), axis=0) if parts else np.zeros(len(codes))
        z = np.nan_to_num(z, nan=0.0)  # regions without any covariate row: the mean, as noted above
        values[driver] = 1.0 / (1.0 + np.exp(-z)) if driver in mapping.unit_drivers else z
    spec = specialization.reindex(list(codes)).to_numpy(dtype=float)
    if np.isnan(spec).any():
        if mapping.specialization_missing == "error":
            raise DataError(f"clusters: region {codes[int(np.argmax(np.isnan(spec)))]!r} has no traded cluster with employment")
        notes.append(f"specializing: {int(np.isnan(spec).sum())} regions without cluster data set to the mean (z = 0)")
    spec = np.nan_to_num(_standardize(spec), nan=0.0)
    defaults = dict(connecting=0.0, educating=0.0, migrating=0.0, amenities=0.0, openness=0.5, anchors=0.0,
                    middleground=0.0, place_policy=0.0, mne_presence=1.0, spawning_share=0.5)
    defaults.update(mapping.constants)
    for name in defaults:
        if name not in values:
            notes.append(f"{name}: not observed; set to {defaults[name]} for every region")
            values[name] = np.full(len(codes), defaults[name])
    drivers = Drivers(
        **{k: jnp.asarray(v, dtype=float) for k, v in values.items() if k != "specializing"},
        specializing=jnp.asarray(np.repeat(spec[:, None], num_domains, axis=1), dtype=float),
    )
    return drivers, notes


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


# --------------------------------------------------------------------------------------------
# The calibration data set
# --------------------------------------------------------------------------------------------


class Observed(eqx.Module):
    """Observations a loss compares with the model, with masks (1 = observed)."""

    patents: Float[Array, "t r"]  # counts in the years after the first
    patents_mask: Float[Array, "t r"]
    nonlocal_count: Float[Array, " r"]  # non-local connections over the window
    linkage_total: Float[Array, " r"]  # all connections
    linkage_mask: Float[Array, " r"]


@dataclass(frozen=True)
class Dataset:
    """Everything a calibration needs: regions, drivers, ties, initial conditions, observations."""

    codes: tuple[str, ...]
    names: tuple[str, ...]
    years: np.ndarray  # (T + 1,) the first year sets the initial state; the others are fitted
    drivers: Drivers
    graph: Graph
    first_patents: np.ndarray  # (R,) observed patents in the first year (initial knowledge)
    initial_active: np.ndarray  # (R,) initial active members (hundreds)
    initial_internationalization: np.ndarray  # (R,)
    observed: Observed
    notes: tuple[str, ...] = ()

    @property
    def num_regions(self) -> int:
        return len(self.codes)


def build_dataset(
    panel: PatentPanel,
    covariates: pd.DataFrame,
    specialization: pd.Series,
    linkage: pd.DataFrame | None,
    edges: pd.DataFrame | None,
    mapping: DriverMapping,
    *,
    first_year: int,
    last_year: int,
    min_edge_weight: float = 1.0,
    notes: tuple[str, ...] = (),
) -> Dataset:
    """Assemble the calibration data set for the regions of the patent panel.

    Regions are those with an observed count in `first_year` (their initial knowledge comes from
    it). Initial active members: bachelor holders in units of 10,000 (population x share with a
    bachelor's / 1e4), or the median where covariates are missing. Initial internationalization:
    the exports share of GDP (median where missing). Edge affinity: log1p(transfers) scaled to
    (0, 1]; edges touching regions outside the panel are dropped and counted in the notes.
    """
    panel = panel.window(first_year, last_year)
    if len(panel.years) < 2:
        raise DataError(f"calibration needs at least two years of patents; got {list(panel.years)}")
    present = ~np.isnan(panel.counts[0])
    codes = tuple(c for c, keep in zip(panel.codes, present) if keep)
    names = tuple(n for n, keep in zip(panel.names, present) if keep)
    counts = panel.counts[:, present]
    notes = list(notes) + [f"{len(codes)} regions with patents in {first_year}, years {first_year}-{panel.years[-1]}"]
    if (~present).any():
        notes.append(f"{int((~present).sum())} regions dropped: no patent count in {first_year}")
    drivers, driver_notes = drivers_from_covariates(codes, covariates, specialization, mapping)
    notes += driver_notes

    table = covariates.reindex(list(codes))
    graduates = (table.population * table.share_bachelor_plus / 1e4).to_numpy(dtype=float)
    if np.isnan(graduates).any():
        notes.append(f"initial active members: {int(np.isnan(graduates).sum())} regions without population data take the median")
        graduates = np.where(np.isnan(graduates), np.nanmedian(graduates), graduates)
    exports = table.exports_share_gdp_2017.to_numpy(dtype=float)
    exports = np.where(np.isnan(exports), np.nanmedian(exports), exports)

    index = {code: i for i, code in enumerate(codes)}
    if edges is not None and len(edges):
        inside = edges.source.isin(index) & edges.target.isin(index) & (edges.weight >= min_edge_weight)
        kept = edges[inside]
        notes.append(f"ties: {int(inside.sum())} edges kept, {int((~inside).sum())} dropped (outside the regions or below {min_edge_weight})")
        affinity = np.log1p(kept.weight.to_numpy()) / np.log1p(kept.weight.max())
        graph = Graph(
            jnp.asarray(kept.source.map(index).to_numpy(dtype=int)),
            jnp.asarray(kept.target.map(index).to_numpy(dtype=int)),
            jnp.asarray(affinity, dtype=float),
        )
    else:
        graph = Graph.empty()

    nonlocal_count = np.zeros(len(codes))
    total = np.zeros(len(codes))
    linkage_mask = np.zeros(len(codes))
    if linkage is not None:
        matched = linkage.reindex(list(codes))
        observed = matched.notna().all(axis=1).to_numpy() & ((matched.local + matched.non_local) > 0).to_numpy()
        nonlocal_count = np.where(observed, matched.non_local.to_numpy(dtype=float), 0.0)
        total = np.where(observed, (matched.local + matched.non_local).to_numpy(dtype=float), 0.0)
        linkage_mask = observed.astype(float)
        notes.append(f"linkages: non-local share observed for {int(observed.sum())} regions")

    later = counts[1:]
    observed = Observed(
        patents=jnp.asarray(np.nan_to_num(later), dtype=float),
        patents_mask=jnp.asarray(~np.isnan(later), dtype=float),
        nonlocal_count=jnp.asarray(nonlocal_count, dtype=float),
        linkage_total=jnp.asarray(total, dtype=float),
        linkage_mask=jnp.asarray(linkage_mask, dtype=float),
    )
    return Dataset(codes, names, panel.years, drivers, graph, counts[0], graduates, exports, observed, tuple(notes))


def default_mapping() -> DriverMapping:
    """The driver proxies suggested with the data (see docs/data.md)."""
    return DriverMapping(
        terms=dict(
            educating=[DriverTerm("univ_rd_total", "log1p", per_capita=True, missing="zero"),
                       DriverTerm("share_bachelor_plus")],
            migrating=[DriverTerm("newcomers_baplus_per_1k", "log", missing="mean")],
            connecting=[DriverTerm("exports_share_gdp_2017", "log", missing="mean"), DriverTerm("population", "log")],
            amenities=[DriverTerm("median_household_income", "log")],
            spawning_share=[DriverTerm("vc_musd_per_1m_2015_17", "log1p", missing="zero")],
        ),
    )
