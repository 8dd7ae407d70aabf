"""Ensembles in one call: scenarios x parameter draws x regions, as nested `vmap`.

A scenario is a forcing (levers and shock, `make_forcing`); a draw is a set of parameters with
the regions' state and drivers under them (from a calibration's Laplace approximation or NUTS
draws, `ensemble_from_calibration`, or one set for synthetic regions). `run_ensemble` simulates
every scenario under every draw with one compiled program: a `vmap` over draws inside a `vmap`
over scenarios, the draws taken in chunks of equal size so that memory stays bounded and the
program is compiled once. It keeps, per scenario, draw and year, each observed variable
aggregated over regions (`SUMMED`: the sum; the others: the mean over regions), and per region
the last year's patents and active members: what the quantile bands and tables are made of.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .forecast import calibrated_regions
from .inputs import LEVERS, Graph, Levers
from .laplace import draw_estimates
from .observation import Observations
from .simulate import make_forcing, simulate, stack
from .state import State

if TYPE_CHECKING:
    from .calibrate import Calibration
    from .data import Dataset
    from .inputs import Drivers, Forcing
    from .params import Params

__all__ = ["SUMMED", "VARIABLES", "Ensemble", "ensemble_from_calibration", "lever_forcings", "run_ensemble",
           "scenario_label"]

VARIABLES = tuple(f.name for f in dataclasses.fields(Observations))  # patents, coinvention_share, ...
SUMMED = ("patents",)  # summed over regions; every other variable is averaged over regions
QUANTILES = (0.05, 0.5, 0.95)
CHUNK_BYTES = 256 * 2**20  # about this much recorded trajectory per chunk of draws


@dataclass
class Ensemble:
    """An ensemble's summaries: `aggregates[v]` (S, N, T) per variable, over regions (`SUMMED`:
    sum; else mean); `last_patents` and `last_active` (S, N, R), each region in the last year.
    S scenarios (`scenarios`, their labels), N draws, T `years`, R regions (`regions`)."""

    scenarios: tuple[str, ...]
    years: np.ndarray
    regions: tuple[str, ...]
    aggregates: dict[str, np.ndarray]
    last_patents: np.ndarray
    last_active: np.ndarray

    @property
    def draws(self) -> int:
        return self.last_patents.shape[1]

    def table(self) -> pd.DataFrame:
        """Tidy: `scenario, variable, aggregate, year, mean, q05, q50, q95`, over the draws."""
        frames = []
        for variable, values in self.aggregates.items():
            for s, scenario in enumerate(self.scenarios):
                frame = pd.DataFrame({"scenario": scenario, "variable": variable,
                                      "aggregate": "sum" if variable in SUMMED else "mean", "year": self.years})
                frames.append(frame.assign(**_summary(values[s])))
        return pd.concat(frames, ignore_index=True)

    def region_table(self) -> pd.DataFrame:
        """Tidy: `scenario, region, variable, mean, q05, q50, q95`: each region in the last year
        (`patents`; `active`, members summed over domains), over the draws."""
        frames = []
        for variable, values in (("patents", self.last_patents), ("active", self.last_active)):
            for s, scenario in enumerate(self.scenarios):
                frame = pd.DataFrame({"scenario": scenario, "region": self.regions, "variable": variable})
                frames.append(frame.assign(**_summary(values[s])))
        return pd.concat(frames, ignore_index=True)


def _summary(values: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and quantiles over the first axis (the draws)."""
    q = np.quantile(values, QUANTILES, axis=0)
    return {"mean": values.mean(0), **{f"q{round(100 * level):02d}": row for level, row in zip(QUANTILES, q)}}


@eqx.filter_jit
def _chunk(params: Params, initial: State, drivers: Drivers, graph: Graph, forcing: Forcing, *, draws_mapped: bool):
    """Summaries of every scenario (leading axis of `forcing`) under every draw of a chunk
    (leading axis of `params`, and of `initial` and `drivers` where `draws_mapped`)."""

    def one(params, initial, drivers, forcing):
        final, traj = simulate(params, initial, drivers, graph, forcing, record_states=False)
        obs = traj.observations
        aggregates = {v: (jnp.sum if v in SUMMED else jnp.mean)(getattr(obs, v), axis=-1) for v in VARIABLES}
        return aggregates, obs.patents[-1], jnp.sum(final.regions.active, axis=-1)

    state_axis = 0 if draws_mapped else None
    over_draws = jax.vmap(one, in_axes=(0, state_axis, state_axis, None))
    return jax.vmap(over_draws, in_axes=(None, None, None, 0))(params, initial, drivers, forcing)


def run_ensemble(params: Params, initial: State, drivers: Drivers, graph: Graph, forcings: Forcing, *,
                 scenarios: tuple[str, ...], regions: tuple[str, ...], years: np.ndarray,
                 draws_mapped: bool = True, chunk: int | None = None) -> Ensemble:
    """Simulate S scenarios (`forcings`, leading axis S; `scenarios`, their labels) under N draws
    (`params` with a leading axis N; `initial` and `drivers` too where `draws_mapped`, else
    shared) of R regions (`regions`) over the T `years`.

    `chunk`: draws per compiled call (default: as many as keep the recorded trajectories near
    `CHUNK_BYTES`); the last chunk is padded with copies of the last draw and trimmed.
    """
    num = jax.tree_util.tree_leaves(params)[0].shape[0]
    num_scenarios, num_years, num_regions = forcings.shock.shape
    if chunk is None:
        per_draw = num_scenarios * num_years * num_regions * len(VARIABLES) * jnp.zeros(()).dtype.itemsize
        chunk = CHUNK_BYTES // per_draw
    chunk = int(max(1, min(num, chunk)))
    mapped = (params, initial, drivers) if draws_mapped else (params,)
    parts = []
    for start in range(0, num, chunk):
        index = np.minimum(np.arange(start, start + chunk), num - 1)  # pad with the last draw
        taken = jax.tree_util.tree_map(lambda x: x[index], mapped)
        one_params, one_initial, one_drivers = taken if draws_mapped else (taken[0], initial, drivers)
        out = _chunk(one_params, one_initial, one_drivers, graph, forcings, draws_mapped=draws_mapped)
        keep = min(chunk, num - start)
        parts.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[:, :keep], out))
    aggregates, last_patents, last_active = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=1), *parts)
    return Ensemble(tuple(scenarios), np.asarray(years), tuple(regions), aggregates, last_patents, last_active)


def scenario_label(levers: dict[str, float]) -> str:
    """`base` for no levers, else `lever=value,...` in the order given."""
    return ",".join(f"{name}={value:g}" for name, value in levers.items()) if levers else "base"


def lever_forcings(settings: list[dict[str, float]], base: dict[str, float], num_years: int, num_regions: int,
                   shock: jax.Array | None = None) -> Forcing:
    """One forcing per lever setting (leading axis S): `base` levers plus the setting's, in
    every region and year, and the same `shock` (T, R) in each."""
    forcings = []
    for setting in settings:
        values = {name: base.get(name, 0.0) + setting.get(name, 0.0) for name in LEVERS}
        forcings.append(make_forcing(num_years, num_regions, levers=Levers(**values), shock=shock))
    return stack(forcings)


def ensemble_from_calibration(calibration: Calibration, data: Dataset, forcings: Forcing, *, scenarios: tuple[str, ...],
                              draws: int, key: jax.Array, chunk: int | None = None) -> Ensemble:
    """The calibrated regions from the data's last year on, under `draws` draws of the estimate
    (its NUTS draws where the calibration has them, else its Laplace approximation; 0: the
    estimate alone), for each scenario of `forcings`. Each draw starts from the regions'
    filtered levels in the last year (`forecast.calibrated_regions`; the starting states of all
    draws are made at once, N x R x the state's size, before the chunks are simulated). Patents are the model's,
    times each draw's national factor held at its value in the last year: at the start they are
    the filtered counts, and their growth is the model's (a forecast with national year effects
    and count noise is `forecast.forecast`)."""
    num_years = forcings.shock.shape[1]
    if draws:
        sampled = draw_estimates(calibration.estimate, calibration.mask, calibration.laplace, key=key, num=draws,
                                 posterior=calibration.posterior)
    else:
        sampled = jax.tree_util.tree_map(lambda x: x[None], calibration.estimate)
    initial, drivers, graph, factor = calibrated_regions(calibration, data, sampled, with_factor=True)
    years = data.years[-1] + np.arange(1, num_years + 1)
    result = run_ensemble(sampled.params, initial, drivers, graph, forcings, scenarios=scenarios, regions=data.names,
                          years=years, chunk=chunk)
    scale = np.exp(np.asarray(factor))[None, :, None]  # (1, N, 1): per draw
    result.aggregates["patents"] = result.aggregates["patents"] * scale
    result.last_patents = result.last_patents * scale
    return result
