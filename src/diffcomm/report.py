"""Outputs of a run: tidy tables, a compact binary, summaries and figures.

Every file is written to a temporary name and renamed into place, so a file that exists is
complete; `summary.json` is written last and marks a finished run.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from .scenario import Scenario
from .simulate import Trajectory

REGION_VARIABLES = ("development", "local_connectedness", "catchment_share")
DOMAIN_VARIABLES = ("active", "passive", "overlap", "knowledge", "internationalization")
OBSERVED_VARIABLES = ("patents", "coinvention_share", "nonlocal_share", "exports_intensity")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    if hasattr(x, "tolist"):
        return np.asarray(x).tolist()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def trajectory_arrays(traj: Trajectory) -> dict[str, np.ndarray]:
    """Name -> array (T, R) or (T, R, K) for every recorded variable."""
    arrays = {name: np.asarray(getattr(traj.observations, name)) for name in OBSERVED_VARIABLES}
    arrays["development"] = np.asarray(traj.observations.development)
    if traj.regions is not None:
        for name in REGION_VARIABLES + DOMAIN_VARIABLES:
            arrays[name] = np.asarray(getattr(traj.regions, name))
    return arrays


def trajectory_frame(scenario: Scenario, traj: Trajectory, *, first_year: int = 1) -> pd.DataFrame:
    """Tidy table: one row per region x year x variable (x domain for per-domain variables).

    Columns: `region, archetype, year, variable, domain, value`; `domain` is empty for
    region-level variables.
    """
    arrays = trajectory_arrays(traj)
    num_years = next(iter(arrays.values())).shape[0]
    years = np.arange(first_year, first_year + num_years)
    regions = np.asarray(scenario.region_names)
    archetypes = np.asarray(scenario.archetype_names)[scenario.archetype]
    frames = []
    for name, values in arrays.items():
        if values.ndim == 2:
            values = values[..., None]
            domains = [pd.NA]
        else:
            domains = list(range(values.shape[-1]))
        t, r, k = np.meshgrid(np.arange(num_years), np.arange(values.shape[1]), np.arange(len(domains)), indexing="ij")
        frames.append(
            pd.DataFrame(
                {
                    "region": regions[r.ravel()],
                    "archetype": archetypes[r.ravel()],
                    "year": years[t.ravel()],
                    "variable": name,
                    "domain": pd.array([domains[i] for i in k.ravel()], dtype="Int64"),
                    "value": values.ravel(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


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


PANELS = (
    ("active", "active members (sum over domains)"),
    ("knowledge", "knowledge (sum over domains)"),
    ("overlap", "local-international overlap"),
    ("internationalization", "internationalization F"),
    ("development", "regional development Y"),
    ("local_connectedness", "local connectedness Lc"),
    ("catchment_share", "catchment share S"),
    ("patents", "expected patents"),
)


def plot_archetype_trajectories(scenario: Scenario, traj: Trajectory, path: Path, *, title: str = "") -> None:
    """One panel per main variable; a line per archetype (mean) with its 10-90% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrays = trajectory_arrays(traj)
    fig, axes = plt.subplots(2, 4, figsize=(16, 7), constrained_layout=True)
    for ax, (variable, label) in zip(axes.ravel(), PANELS):
        values = arrays[variable]
        if values.ndim == 3:
            values = values.sum(-1) if variable in ("active", "knowledge") else values.mean(-1)
        years = np.arange(1, values.shape[0] + 1)
        for index, name in enumerate(scenario.archetype_names):
            v = values[:, scenario.archetype == index]
            (line,) = ax.plot(years, v.mean(-1), label=name.replace("_", " "))
            ax.fill_between(years, *np.percentile(v, [10, 90], axis=-1), color=line.get_color(), alpha=0.15)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("year")
        if variable in ("active", "knowledge", "patents"):
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_simulation(
    out_dir: Path,
    scenario: Scenario,
    traj: Trajectory,
    *,
    config: dict,
    seconds: float,
    csv: bool = True,
    figures: bool = True,
) -> dict:
    """Write a simulation's outputs into `out_dir`; return the summary written last.

    Files: `trajectories.csv` (tidy), `trajectories.npz` (arrays, names and labels),
    `summary.csv` (per archetype), `trajectories.png`, and `summary.json`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = trajectory_arrays(traj)
    with atomic_path(out_dir / "trajectories.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                region=np.asarray(scenario.region_names),
                archetype=np.asarray(scenario.archetype_names)[scenario.archetype],
                **arrays,
            )
    if csv:
        with atomic_path(out_dir / "trajectories.csv") as tmp:
            trajectory_frame(scenario, traj).to_csv(tmp, index=False)
    table = archetype_summary(scenario, traj)
    with atomic_path(out_dir / "summary.csv") as tmp:
        table.to_csv(tmp, index=False)
    if figures:
        plot_archetype_trajectories(scenario, traj, out_dir / "trajectories.png", title=config.get("scenario", {}).get("name", ""))
    summary = {
        "regions": scenario.num_regions,
        "years": int(arrays["patents"].shape[0]),
        "domains": int(arrays["active"].shape[-1]) if "active" in arrays else None,
        "seconds": seconds,
        "archetypes": table.to_dict(orient="records"),
        "config": config,
        "files": sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(".")) + ["summary.json"],
    }
    write_json(out_dir / "summary.json", summary)
    return summary
