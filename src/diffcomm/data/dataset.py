"""The calibration data set: regions, drivers, ties, initial conditions and observations.

A `Dataset` is one `eqx.Module`: its arrays are leaves, so the whole data set passes through
`jit` as an argument (a program is compiled once, not with the data baked in), and its labels
(region codes and names, years, notes on every fill) are static fields: a data set with other
labels traces again, and finds its compiled program in the persistent cache.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float

from ..config import DataConfig, DriverTerm
from ..errors import DataError
from ..inputs import INITIAL_TIE, Drivers, Graph
from .drivers import drivers_from_covariates
from .tables import PatentPanel, load_covariates, load_edges, load_linkage_counts, load_patents, load_specialization, resolve


class Dataset(eqx.Module):
    """Everything a calibration reads, for R regions and the years `years[0]` .. `years[T]`.

    The first year sets the initial state (knowledge from its patent counts); the T later
    years are compared with the model where `patents_mask` is 1.
    """

    drivers: Drivers  # leading axis R
    graph: Graph  # cross-local ties between the regions
    first_patents: Float[Array, " r"]  # patents in the first year
    initial_active: Float[Array, " r"]  # active members (hundreds)
    initial_internationalization: Float[Array, " r"]
    patents: Float[Array, "t r"]  # patents in the years after the first; 0 where not observed
    patents_mask: Float[Array, "t r"]  # 1 where a count is observed and fitted
    window: Float[Array, " t"]  # 1 for fitted years: the linkage share is compared with their mean
    nonlocal_count: Float[Array, " r"]  # non-local connections over the linkage period
    linkage_total: Float[Array, " r"]  # all connections
    linkage_mask: Float[Array, " r"]  # 1 where the linkage counts are observed
    codes: tuple[str, ...] = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)
    years: tuple[int, ...] = eqx.field(static=True)  # T + 1 consecutive years
    notes: tuple[str, ...] = eqx.field(static=True)  # every fill and drop made in building it
    spin_up_years: int = eqx.field(static=True, default=0)  # years run before the first (`simulate.initial_state`)
    one_step_ahead: bool = eqx.field(static=True, default=False)  # each year from the last one's counts (`loss.conditioned_path`)
    initial_ties: Float[Array, " e"] | None = None  # each tie's strength in the first year; None: `INITIAL_TIE` on every tie

    @property
    def num_regions(self) -> int:
        return len(self.codes)

    @property
    def num_observations(self) -> Array:
        """Observed cells the loss sums over: patent counts and linkage shares."""
        return jnp.sum(self.patents_mask) + jnp.sum(self.linkage_mask)

    def observed_patents(self) -> np.ndarray:
        """Patents in the years after the first, NaN where not observed or held out (T, R)."""
        return np.where(np.asarray(self.patents_mask) > 0, np.asarray(self.patents), np.nan)

    def through(self, last_year: int) -> Dataset:
        """The same data set with the years after `last_year` held out (masked, not removed).

        Shapes stay the same, so a fit on it reuses the programs compiled for the whole data.
        """
        if not self.years[0] < last_year <= self.years[-1]:
            raise ValueError(f"last_year must lie in {self.years[0] + 1}..{self.years[-1]}, got {last_year}")
        window = jnp.asarray(np.asarray(self.years[1:]) <= last_year, dtype=self.window.dtype)
        return eqx.tree_at(lambda d: (d.patents_mask, d.window), self, (self.patents_mask * window[:, None], window))


MAX_INITIAL_TIE = 0.95  # the largest first-year strength of a tie set from an earlier period

INITIAL_STATE_COLUMNS = ("population", "share_bachelor_plus", "exports_share_gdp_2017")
"""Covariates the initial state reads: active members from graduates (population x share with a
bachelor's), internationalization from the exports share of GDP."""


def covariate_columns(config: DataConfig) -> list[str]:
    """The covariate columns a data set needs: the initial state's and those its driver terms name."""
    named = [term.column for terms in config.drivers.values() for term in terms]
    return list(dict.fromkeys([*INITIAL_STATE_COLUMNS, *named]))


def load_dataset(config: DataConfig) -> Dataset:
    """The calibration data set that `config` describes (files, years, regions, drivers)."""
    panel = load_patents(config.patents, max_count=config.max_patents)
    covariates, notes = load_covariates(config.covariates, covariate_columns(config),
                                        on_duplicate=config.covariate_duplicates)
    specialization = load_specialization(config.clusters) if config.clusters else pd.Series(dtype=float)
    linkage = load_linkage_counts(config.linkages, period=config.linkage_period) if config.linkages else None
    edges = earlier = None
    if config.edges:
        known = set(panel.codes) | set(covariates.index) | (set(linkage.index) if linkage is not None else set())
        edges = load_edges(config.edges, known_codes=known, period=config.edge_period)
        if config.initial_tie_period:
            earlier = load_edges(config.edges, known_codes=known, period=config.initial_tie_period)
            if not len(earlier):
                raise DataError(f"data.initial_tie_period={config.initial_tie_period!r}: {resolve(config.edges)} has no "
                                "edges for that period")
    for key in ("first_year", "last_year"):
        year = getattr(config, key)
        if year not in panel.years:
            raise DataError(f"data.{key}={year}: {resolve(config.patents)} has patents for "
                            f"{panel.years[0]}-{panel.years[-1]} only")
    if config.regions:
        unknown = sorted(set(config.regions) - set(panel.codes))
        if unknown:
            raise DataError(f"{resolve(config.patents)}: unknown region code(s) {unknown[:5]} in data.regions")
        keep = np.isin(panel.codes, config.regions)
        panel = PatentPanel(tuple(np.asarray(panel.codes)[keep]), tuple(np.asarray(panel.names)[keep]),
                            panel.years, panel.counts[:, keep])
    return build_dataset(panel, covariates, specialization, linkage, edges, config.drivers,
                         first_year=config.first_year, last_year=config.last_year,
                         min_edge_weight=config.min_edge_weight, notes=tuple(notes), spin_up_years=config.spin_up_years,
                         one_step_ahead=config.one_step_ahead,
                         earlier_edges=earlier)


def build_dataset(
    panel: PatentPanel,
    covariates: pd.DataFrame,
    specialization: pd.Series,
    linkage: pd.DataFrame | None,
    edges: pd.DataFrame | None,
    drivers: dict[str, list[DriverTerm]],
    *,
    first_year: int,
    last_year: int,
    min_edge_weight: float = 1.0,
    notes: tuple[str, ...] = (),
    spin_up_years: int = 0,
    one_step_ahead: bool = False,
    earlier_edges: pd.DataFrame | None = None,
) -> Dataset:
    """Assemble the calibration data set for the regions of the patent panel.

    Regions are those with an observed count in `first_year` (their initial knowledge comes from
    it). Initial active members: bachelor holders in units of 10,000 (population x share with a
    bachelor's / 1e4), or the median where covariates are missing. Initial internationalization:
    the exports share of GDP (median where missing). Edge affinity: log1p(transfers) scaled to
    (0, 1]; edges touching regions outside the panel are dropped and counted in the notes. With
    `earlier_edges` (an earlier period's edge list), each tie's strength in the first year is
    log1p of its earlier transfers scaled to a mean of `INITIAL_TIE` (0 for a tie absent then).
    """
    notes = list(notes) + _panel_notes(panel, first_year, last_year)
    panel = panel.window(first_year, last_year)
    if len(panel.years) < 2:
        raise DataError(f"calibration needs at least two years of patents; got {list(panel.years)}")
    present = ~np.isnan(panel.counts[0])
    if not present.any():
        raise DataError(f"no region has a patent count in the first year {first_year}; the initial state needs one")
    codes = tuple(str(c) for c, keep in zip(panel.codes, present) if keep)
    names = tuple(str(n) for n, keep in zip(panel.names, present) if keep)
    counts = panel.counts[:, present]
    notes.append(f"{len(codes)} regions with patents in {first_year}, years {first_year}-{panel.years[-1]}")
    if (~present).any():
        notes.append(f"{int((~present).sum())} regions dropped: no patent count in {first_year}")
    blank = np.isnan(counts[1:])
    if blank.any():
        notes.append(f"{int(blank.sum())} blank patent cells (region-years after {first_year}) are masked, not filled")
    region_drivers, driver_notes = drivers_from_covariates(codes, covariates, specialization, drivers)
    notes += driver_notes

    table = covariates.reindex(list(codes))
    graduates = (table.population * table.share_bachelor_plus / 1e4).to_numpy(dtype=float)
    if np.isnan(graduates).any():
        notes.append(f"initial active members: {int(np.isnan(graduates).sum())} regions without population data take the median")
        graduates = np.where(np.isnan(graduates), np.nanmedian(graduates), graduates)
    exports = table.exports_share_gdp_2017.to_numpy(dtype=float)
    if np.isnan(exports).any():
        notes.append(f"initial internationalization: {int(np.isnan(exports).sum())} regions without exports take the median")
        exports = np.where(np.isnan(exports), np.nanmedian(exports), exports)
    graph, initial_ties = _ties(codes, edges, min_edge_weight, notes, earlier_edges)
    nonlocal_count, total, linkage_mask = _linkages(codes, linkage, notes)

    later = counts[1:]
    return Dataset(
        drivers=region_drivers,
        graph=graph,
        first_patents=jnp.asarray(counts[0], dtype=float),
        initial_active=jnp.asarray(graduates, dtype=float),
        initial_internationalization=jnp.asarray(exports, dtype=float),
        patents=jnp.asarray(np.nan_to_num(later), dtype=float),
        patents_mask=jnp.asarray(~np.isnan(later), dtype=float),
        window=jnp.ones(len(later)),
        nonlocal_count=jnp.asarray(nonlocal_count, dtype=float),
        linkage_total=jnp.asarray(total, dtype=float),
        linkage_mask=jnp.asarray(linkage_mask, dtype=float),
        codes=codes,
        names=names,
        years=tuple(int(y) for y in panel.years),
        notes=tuple(notes),
        spin_up_years=spin_up_years,
        one_step_ahead=one_step_ahead,
        initial_ties=initial_ties,
    )


def _panel_notes(panel: PatentPanel, first_year: int, last_year: int) -> list[str]:
    """Notes on what the window leaves out of the file and on years the file lacks."""
    notes = []
    outside = (panel.years < first_year) | (panel.years > last_year)
    unused = int(np.sum(~np.isnan(panel.counts[outside])))
    if unused:
        notes.append(f"{unused} patent counts outside {first_year}-{last_year} are not used")
    inside = ~outside
    empty_years = panel.years[inside][np.isnan(panel.counts[inside]).all(axis=1)]
    if len(empty_years):
        notes.append(f"no patent counts at all for {', '.join(map(str, empty_years))}: those years are masked")
    return notes


def _ties(codes: tuple[str, ...], edges: pd.DataFrame | None, min_edge_weight: float, notes: list[str],
          earlier: pd.DataFrame | None = None) -> tuple[Graph, Array | None]:
    """The tie graph, and each tie's strength in the first year from `earlier` edges (None without)."""
    if edges is None or not len(edges):
        return Graph.empty(), None
    index = {code: i for i, code in enumerate(codes)}
    inside = edges.source.isin(index) & edges.target.isin(index) & (edges.weight >= min_edge_weight)
    kept = edges[inside]
    notes.append(f"ties: {int(inside.sum())} edges kept, {int((~inside).sum())} dropped (outside the regions or below "
                 f"{min_edge_weight})")
    affinity = np.log1p(kept.weight.to_numpy()) / np.log1p(kept.weight.max())
    graph = Graph(
        jnp.asarray(kept.source.map(index).to_numpy(dtype=int)),
        jnp.asarray(kept.target.map(index).to_numpy(dtype=int)),
        jnp.asarray(affinity, dtype=float),
    )
    if earlier is None:
        return graph, None
    then = kept.merge(earlier, on=["source", "target"], how="left", suffixes=("", "_then")).weight_then.fillna(0.0)
    strength = np.log1p(then.to_numpy(dtype=float))
    initial = np.minimum(INITIAL_TIE * strength / strength.mean(), MAX_INITIAL_TIE)
    notes.append(f"ties: first-year strength from the earlier period's transfers; {int((strength > 0).sum())} of "
                 f"{len(strength)} ties had transfers then, the others start at 0")
    return graph, jnp.asarray(initial, dtype=float)


def _linkages(codes: tuple[str, ...], linkage: pd.DataFrame | None, notes: list[str]):
    """Non-local and all connections per region, and where they are observed (R,) each."""
    if linkage is None:
        return np.zeros(len(codes)), np.zeros(len(codes)), np.zeros(len(codes))
    matched = linkage.reindex(list(codes))
    observed = matched.notna().all(axis=1).to_numpy() & ((matched.local + matched.non_local) > 0).to_numpy()
    nonlocal_count = np.where(observed, matched.non_local.to_numpy(dtype=float), 0.0)
    total = np.where(observed, (matched.local + matched.non_local).to_numpy(dtype=float), 0.0)
    notes.append(f"linkages: non-local share observed for {int(observed.sum())} regions")
    return nonlocal_count, total, observed.astype(float)
