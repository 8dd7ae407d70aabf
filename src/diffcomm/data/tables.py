"""Reading and checking the shipped (or a user's) tables: one loader per kind of file.

Every loader checks its file and raises :class:`DataError` naming the file, the row (as a line
number of the file) or column, and what was expected. Missing cells are kept as NaN and masked
downstream, never turned into zeros.
"""

from __future__ import annotations

import csv
import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..errors import DataError

DATA_DIR = Path(__file__).parents[1] / "datasets"
CODE_PATTERN = re.compile(r"^\d{5}$")
YEARS = (1800, 2100)  # the calendar years a data file may hold


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
    _same_number_of_fields(path)
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


def _same_number_of_fields(path: Path) -> None:
    """Refuse a row with fewer fields than the header (pandas would read the missing ones as blank)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        width = len(next(rows))
        for line, row in enumerate(rows, start=2):
            if row and len(row) < width:
                raise DataError(f"{path}:{line}: {len(row)} fields where the header has {width}; leave a cell empty "
                                "with nothing between its commas")


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
        outside = (values % 1 != 0) | (values < YEARS[0]) | (values > YEARS[1])
        if outside.any():
            line = outside.idxmax()
            raise DataError(f"{path}:{line}: column {name!r}: expected a calendar year from {YEARS[0]} to {YEARS[1]}, "
                            f"got {raw[line]!r}")
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

    def window(self, first: int, last: int) -> PatentPanel:
        """The years from `first` to `last`, both of which must lie in the panel."""
        keep = (self.years >= first) & (self.years <= last)
        return PatentPanel(self.codes, self.names, self.years[keep], self.counts[keep])


def load_patents(
    path: str | Path,
    *,
    region: str = "cbsa_code",
    year: str = "year",
    count: str = "patents",
    name: str | None = "cbsa_name",
    max_count: float = DataConfig.max_patents,
) -> PatentPanel:
    """A long CSV of (region, year, count) as a region x year panel.

    Years between the first and last become consecutive; cells absent from the file are NaN.
    A count above `max_count` is refused as implausible (one region-year; set it higher if real).
    """
    columns = {region: "code", year: "year", count: "count"}
    if name:
        columns[name] = "text"
    frame = read_table(path, columns)
    too_large = frame[count] > max_count
    if too_large.any():
        line = too_large.idxmax()
        raise DataError(f"{resolve(path)}:{line}: column {count!r}: {frame.loc[line, count]:.6g} in one region-year is "
                        f"above the plausible maximum {max_count:.6g} (data.max_patents); fix the cell or raise the maximum")
    _no_duplicates(path, frame, [region, year])
    codes = tuple(sorted(frame[region].unique()))
    names = frame.groupby(region)[name].first().reindex(codes) if name else pd.Series(codes, index=codes)
    years = np.arange(frame[year].min(), frame[year].max() + 1)
    table = frame.pivot(index=year, columns=region, values=count).reindex(index=years, columns=list(codes))
    return PatentPanel(codes, tuple(names.astype(str)), years, table.to_numpy(dtype=float))


def load_covariates(
    path: str | Path,
    columns: list[str],
    *,
    on_duplicate: str = "error",
) -> tuple[pd.DataFrame, list[str]]:
    """Region covariates indexed by region code (`cbsa_code`): the numeric `columns` asked for
    (others in the file are not read).

    `on_duplicate`: `error` (default), or `first` to keep the first row of a repeated region.

    **Returns:** the table and a note for each repeated region so resolved.
    """
    key = "cbsa_code"
    frame = read_table(path, {key: "code", **{column: "number" for column in columns}})
    notes = []
    if on_duplicate == "first":
        for code in frame[key][frame.duplicated(key)].unique():
            lines = list(frame.index[frame[key] == code])
            notes.append(f"covariates: region {code} appears on lines {lines}; kept line {lines[0]}")
        frame = frame.drop_duplicates(key, keep="first")
    elif on_duplicate != "error":
        raise ValueError(f"on_duplicate must be 'error' or 'first', got {on_duplicate!r}")
    _no_duplicates(path, frame, [key])
    return frame.set_index(key), notes


def load_specialization(path: str | Path, *, top: int = 3) -> pd.Series:
    """Per region: mean log location quotient of its `top` strongest traded clusters (employment > 0)."""
    frame = read_table(path, {"cbsa_code": "code", "cluster_code": "count", "employment": "count", "location_quotient": "number"})
    _no_duplicates(path, frame, ["cbsa_code", "cluster_code"])
    present = frame[(frame.employment > 0) & (frame.location_quotient > 0)]
    strongest = present.sort_values("location_quotient", ascending=False).groupby("cbsa_code").head(top)
    return np.log(strongest.groupby("cbsa_code").location_quotient.mean()).rename("specialization")


def load_linkage_counts(path: str | Path, *, period: str) -> pd.DataFrame:
    """Local and non-local connections per region in one period: columns `local`, `non_local`."""
    frame = read_table(
        path,
        {"cbsa_code": "code", "period": "text", "intracity_transfers": "count", "intercity_out": "count",
         "intercity_in": "count"},
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
    path: str | Path,
    *,
    known_codes: set[str],
    period: str | None,
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
    """A multi-domain panel: `inventors[p, s, k]` for period p, state s, domain k (NaN when suppressed
    or absent), and the patents of each state and of each domain per period."""

    states: tuple[str, ...]
    state_names: tuple[str, ...]
    domains: tuple[str, ...]
    periods: np.ndarray  # the first year of each period
    inventors: np.ndarray  # (P, S, K)
    foreign_origin_share: np.ndarray  # (P, S, K), in [0, 1]; NaN where inventors are
    onshored_patents: np.ndarray  # (P, S, K); NaN where the file has no row
    state_patents: np.ndarray  # (P, S): all of a state's patents in the period
    domain_patents: np.ndarray  # (P, K): all patents of a technology group in the period


def load_state_tech(path: str | Path) -> DomainPanel:
    """The state x technology-group panel (inventors, foreign-origin share, onshored patents, and the
    state's and the group's patents, each constant within its state-period or group-period)."""
    frame = read_table(
        path,
        {"state": "text", "state_name": "text", "tech_group": "text", "period_start": "year", "inventors": "count",
         "foreign_origin_inventor_pct": "number", "onshored_patents": "count", "state_patents": "count",
         "tech_group_patents": "count"},
    )
    _no_duplicates(path, frame, ["state", "tech_group", "period_start"])
    pct = frame.foreign_origin_inventor_pct
    if ((pct < 0) | (pct > 100)).any():
        line = ((pct < 0) | (pct > 100)).idxmax()
        raise DataError(f"{resolve(path)}:{line}: column 'foreign_origin_inventor_pct': expected a percentage in [0, 100], "
                        f"got {pct[line]}")
    states, domains = sorted(frame.state.unique()), sorted(frame.tech_group.unique())
    periods = np.sort(frame.period_start.unique())
    index = pd.MultiIndex.from_product([periods, states, domains])

    def cube(column):
        series = frame.set_index(["period_start", "state", "tech_group"])[column].reindex(index)
        return series.to_numpy(dtype=float).reshape(len(periods), len(states), len(domains))

    def margin(column, key, labels):
        for name in (column, "state_name") if key == "state" else (column,):
            first = frame.groupby(["period_start", key])[name].transform("first")
            varying = (frame[name] != first) & frame[name].notna()  # the first row that differs from its group's first
            if varying.any():
                line = varying.idxmax()
                where = f"{key}={frame.loc[line, key]!r}, period_start={frame.loc[line, 'period_start']}"
                raise DataError(f"{resolve(path)}:{line}: column {name!r}: expected one value per {key} and period, "
                                f"found {frame.loc[line, name]!r} and {first[line]!r} for {where}")
        if frame[column].isna().any():
            line = frame[column].isna().idxmax()
            raise DataError(f"{resolve(path)}:{line}: column {column!r}: expected a count, got an empty cell")
        first = frame.groupby(["period_start", key])[column].first()
        return first.reindex(pd.MultiIndex.from_product([periods, labels])).to_numpy(dtype=float).reshape(len(periods),
                                                                                                           len(labels))

    names = frame.groupby("state").state_name.first().reindex(states)
    return DomainPanel(tuple(states), tuple(names), tuple(domains), periods, cube("inventors"),
                       cube("foreign_origin_inventor_pct") / 100.0, cube("onshored_patents"),
                       margin("state_patents", "state", states), margin("tech_group_patents", "tech_group", domains))
