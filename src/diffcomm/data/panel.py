"""The calibration data set of a state x domain panel (`data.domain_panel`, e.g. `us_state_tech`).

Where the metro panel observes knowledge only (patents per region), this panel observes the
community itself: the inventors of each state in each technology field, every period. A
`DomainDataset` holds what a calibration on it reads (`domains.py`): the drivers of every year,
the initial state, and the observations of the later periods. Each period (e.g. 1991-1993) is
read at its middle year; the model runs yearly from the first period's middle year, and the
drivers of a year are those of the latest period that has started by then. docs/data.md says
why each column plays the part it plays here.
"""

from __future__ import annotations

import dataclasses
import warnings

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..config import DataConfig
from ..errors import DataError
from ..inputs import NEUTRAL_DRIVERS, Drivers, Graph
from .tables import DomainPanel, load_state_tech, resolve

INVENTORS_PER_MEMBER = 100.0
"""Inventors per unit of the model's active members (A is counted in hundreds, as on the metros)."""

DRIVER_FIELDS = tuple(f.name for f in dataclasses.fields(Drivers))

SUPPRESSED_INVENTORS = 15.0
"""What an empty inventor cell (fewer than 30 inventors, or no row) stands for where a value is
needed (the initial community and the specialization driver); the likelihood masks it."""


class DomainDataset(eqx.Module):
    """What a calibration on a state x domain panel reads, for R states and K domains.

    The model's year 0 is the middle year of the first period (its counts set the initial state);
    the T later years are simulated, and period p (after the first) is observed at the simulated
    year `observed_at[p]` (an index into those T years).
    """

    drivers: Drivers  # the first year's, leading axis R (`migrating` and `specializing` are (R, K))
    yearly: Drivers  # the drivers of each simulated year, leading axes (T, R)
    graph: Graph  # no cross-local ties: the panel has no state-to-state edges
    initial_active: Float[Array, "r k"]  # the first period's inventors / INVENTORS_PER_MEMBER
    first_patents: Float[Array, " r"]  # the first period's patents of each state
    inventors: Float[Array, "p r k"]  # inventors in the later periods; 0 where not observed
    inventors_mask: Float[Array, "p r k"]  # 1 where a count is observed and fitted
    patents: Float[Array, "p r"]  # each state's patents in the later periods
    patents_mask: Float[Array, "p r"]
    domain_patents: Float[Array, "p k"]  # each domain's patents in the later periods
    domain_mask: Float[Array, " p"]  # 1 for a fitted period
    codes: tuple[str, ...] = eqx.field(static=True)  # states
    names: tuple[str, ...] = eqx.field(static=True)
    domains: tuple[str, ...] = eqx.field(static=True)
    periods: tuple[int, ...] = eqx.field(static=True)  # the first year of every period, the first included
    observed_at: tuple[int, ...] = eqx.field(static=True)  # per later period, its simulated year's index
    first_year: int = eqx.field(static=True)  # the model's year 0
    notes: tuple[str, ...] = eqx.field(static=True)

    @property
    def num_regions(self) -> int:
        return len(self.codes)

    @property
    def num_years(self) -> int:
        """Years simulated after the first."""
        return int(np.shape(self.yearly.amenities)[0])

    @property
    def years(self) -> tuple[int, ...]:
        """The model's years, the first (year 0) included."""
        return tuple(range(self.first_year, self.first_year + self.num_years + 1))

    @property
    def num_observations(self) -> Array:
        return jnp.sum(self.inventors_mask) + jnp.sum(self.patents_mask) + jnp.sum(self.domain_mask)

    def observed_inventors(self) -> np.ndarray:
        """Inventors in the later periods, NaN where not observed or held out (P, R, K)."""
        return np.where(np.asarray(self.inventors_mask) > 0, np.asarray(self.inventors), np.nan)

    def observed_patents(self) -> np.ndarray:
        return np.where(np.asarray(self.patents_mask) > 0, np.asarray(self.patents), np.nan)

    def period_index(self, period: int) -> int:
        """The index among the later periods of the period that starts in `period`."""
        if period not in self.periods[1:]:
            raise ValueError(f"{period} is not the first year of a period after the first; periods: {list(self.periods)}")
        return self.periods.index(period) - 1

    def through(self, period: int) -> DomainDataset:
        """The same data set with the periods after `period` held out (masked, not removed)."""
        keep = jnp.asarray(np.asarray(self.periods[1:]) <= period, dtype=float)
        return eqx.tree_at(lambda d: (d.inventors_mask, d.patents_mask, d.domain_mask), self,
                           (self.inventors_mask * keep[:, None, None], self.patents_mask * keep[:, None],
                            self.domain_mask * keep))


def load_domain_dataset(config: DataConfig) -> DomainDataset:
    """The panel `config.domain_panel` between `config.first_year` and `config.last_year` (each a
    period's first year) as a `DomainDataset`."""
    panel = load_state_tech(config.domain_panel)
    periods = [int(p) for p in panel.periods]
    for key in ("first_year", "last_year"):
        year = getattr(config, key)
        if year not in periods:
            raise DataError(f"data.{key}={year}: {resolve(config.domain_panel)} has periods starting in {periods}; "
                            f"data.{key} must be one of them")
    keep = (panel.periods >= config.first_year) & (panel.periods <= config.last_year)
    if keep.sum() < 3:
        raise DataError(f"data.first_year-data.last_year ({config.first_year}-{config.last_year}) holds {int(keep.sum())} "
                        f"periods of {resolve(config.domain_panel)}; a calibration needs at least 3")
    return build_domain_dataset(panel, keep)


def _zscore(x: np.ndarray) -> np.ndarray:
    mean, sd = np.nanmean(x), np.nanstd(x)
    return (x - mean) / (sd if sd > 0 else 1.0)


def build_domain_dataset(panel: DomainPanel, keep: np.ndarray) -> DomainDataset:
    """Assemble the data set from the periods of `panel` that `keep` marks.

    Drivers (all others stay at `NEUTRAL_DRIVERS`: the panel does not measure them):

    - `migrating` (R, K, by period): the foreign-origin share of the cell's inventors, as a z-score
      over every observed cell and period; an empty cell takes the state's mean over its observed
      fields in that period, or 0 (the mean) where the state has none.
    - `mne_presence` (R, by period): patents of non-US firms with inventors in the state (onshored,
      summed over fields) per patent of the state, divided by its mean over states and periods
      (1 is the average presence, the model's neutral value).
    - `specializing` (R, K, fixed): the z-score of the log location quotient of the first period's
      inventors, an empty cell counted as `SUPPRESSED_INVENTORS`: fixed at the start so that the
      driver does not read the counts the model is fitted to.
    """
    notes: list[str] = []
    periods = tuple(int(p) for p in panel.periods[keep])
    inventors, share = panel.inventors[keep], panel.foreign_origin_share[keep]
    onshored, state_patents, domain_patents = panel.onshored_patents[keep], panel.state_patents[keep], panel.domain_patents[keep]
    num_periods, num_states, num_domains = inventors.shape
    notes.append(f"{num_states} states x {num_domains} fields, periods starting {periods[0]}-{periods[-1]}, each read at "
                 f"its middle year")
    blank = np.isnan(inventors[1:])
    notes.append(f"{int(blank.sum())} of {blank.size} inventor cells after {periods[0]} are empty (fewer than 30 inventors, "
                 "or no row): masked, not filled")

    first_patents = state_patents[0].copy()
    missing = np.isnan(first_patents)
    if missing.any():
        later = np.array([next((v for v in state_patents[1:, s] if np.isfinite(v)), np.nan) for s in range(num_states)])
        if np.isnan(later[missing]).any():
            s = int(np.flatnonzero(missing & np.isnan(later))[0])
            raise DataError(f"state {panel.states[s]!r} has no patents in any period from {periods[0]}")
        first_patents[missing] = later[missing]
        notes.append(f"initial knowledge: {int(missing.sum())} states without a row in {periods[0]} "
                     f"({', '.join(np.asarray(panel.states)[missing])}) take their first later patent count")
    first_inventors = np.where(np.isnan(inventors[0]), SUPPRESSED_INVENTORS, inventors[0])
    notes.append(f"initial active members: {int(np.isnan(inventors[0]).sum())} empty cells of {periods[0]} count as "
                 f"{SUPPRESSED_INVENTORS:g} inventors")

    migrating = _zscore(share)
    with warnings.catch_warnings():  # a state with no observed field in a period: its mean is NaN, then 0
        warnings.simplefilter("ignore", RuntimeWarning)
        state_mean = np.nan_to_num(np.nanmean(migrating, axis=2, keepdims=True))
    filled = int(np.isnan(migrating).sum())
    migrating = np.where(np.isnan(migrating), state_mean, migrating)
    notes.append(f"migrating: {filled} empty foreign-origin cells take their state's mean z-score in the period (or 0)")

    intensity = np.nansum(onshored, axis=2) / np.where(np.isnan(state_patents), np.nan, state_patents)
    presence = intensity / np.nanmean(intensity)
    presence = np.where(np.isnan(presence), 1.0, presence)

    totals = first_inventors.sum(axis=1, keepdims=True)
    quotient = (first_inventors / totals) / (first_inventors.sum(axis=0, keepdims=True) / first_inventors.sum())
    specializing = _zscore(np.log(quotient))

    def drivers(p: int) -> Drivers:
        fields = {k: np.full(num_states, v) for k, v in NEUTRAL_DRIVERS.items()}
        fields.update(migrating=migrating[p], mne_presence=presence[p], specializing=specializing)
        return Drivers(**{k: jnp.asarray(v, dtype=float) for k, v in fields.items()})

    first_year = periods[0] + 1
    years = np.arange(first_year + 1, periods[-1] + 2)  # the simulated years after year 0
    period_of_year = np.searchsorted(np.asarray(periods), years - 1, side="right") - 1  # the latest period started
    per_period = [drivers(p) for p in range(num_periods)]
    yearly = Drivers(**{f: jnp.stack([getattr(per_period[p], f) for p in period_of_year]) for f in DRIVER_FIELDS})
    observed_at = tuple(int(np.flatnonzero(years == p + 1)[0]) for p in periods[1:])

    later = inventors[1:]
    return DomainDataset(
        drivers=per_period[0],
        yearly=yearly,
        graph=Graph.empty(),
        initial_active=jnp.asarray(first_inventors / INVENTORS_PER_MEMBER, dtype=float),
        first_patents=jnp.asarray(first_patents, dtype=float),
        inventors=jnp.asarray(np.nan_to_num(later), dtype=float),
        inventors_mask=jnp.asarray(~np.isnan(later), dtype=float),
        patents=jnp.asarray(np.nan_to_num(state_patents[1:]), dtype=float),
        patents_mask=jnp.asarray(~np.isnan(state_patents[1:]), dtype=float),
        domain_patents=jnp.asarray(domain_patents[1:], dtype=float),
        domain_mask=jnp.ones(num_periods - 1),
        codes=tuple(panel.states),
        names=tuple(panel.state_names),
        domains=tuple(panel.domains),
        periods=periods,
        observed_at=observed_at,
        first_year=int(first_year),
        notes=tuple(notes),
    )
