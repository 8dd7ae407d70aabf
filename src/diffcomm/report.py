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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _pyplot().close(fig)


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
    plt = _pyplot()
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
    _save(fig, path)


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


# --------------------------------------------------------------------------------------------
# Calibration and forecasts
# --------------------------------------------------------------------------------------------


def plot_loss_history(history: dict, path: Path, *, title: str = "") -> None:
    """Loss of every restart over optimizer steps."""
    plt = _pyplot()
    loss = np.asarray(history["loss"], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for r in range(loss.shape[1]):
        ax.plot(np.arange(1, len(loss) + 1), loss[:, r], lw=1, label=f"start {r}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per observation (NLL + prior)")
    ax.set_yscale("log")
    ax.set_title(title or "calibration loss")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_observed_vs_fitted(
    years: np.ndarray, observed: np.ndarray, fitted: np.ndarray, lower: np.ndarray, upper: np.ndarray,
    names: tuple[str, ...], path: Path, *, largest: int = 12, extra: dict | None = None,
) -> None:
    """Aggregate series and a panel of the largest regions: observed points, fitted line, band.

    `extra`: optional name -> (years, values (T, R)) lines to add (e.g. a forecast).
    """
    plt = _pyplot()
    order = np.argsort(-np.nansum(observed, axis=0))[:largest]
    cols = 4
    rows = 1 + int(np.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(16, 3.2 * rows), constrained_layout=True)
    axes = np.atleast_2d(axes)
    top = fig.add_subplot(rows, 1, 1)
    for ax in axes[0]:
        ax.remove()
    series = [("all regions", slice(None))] + [(names[i], i) for i in order]
    for k, (label, idx) in enumerate(series):
        ax = top if k == 0 else axes.ravel()[cols + k - 1]
        agg = (lambda a: np.nansum(a, axis=1)) if k == 0 else (lambda a, i=idx: a[:, i])
        ax.fill_between(years, agg(lower), agg(upper), alpha=0.2, color="C0", label="90% interval" if k == 0 else None)
        ax.plot(years, agg(fitted), color="C0", label="model" if k == 0 else None)
        ax.plot(years, agg(observed), "o", color="k", ms=3, label="observed" if k == 0 else None)
        for j, (name, (extra_years, values)) in enumerate((extra or {}).items()):
            ax.plot(extra_years, agg(values), ls="--", color=f"C{j + 1}", label=name if k == 0 else None)
        ax.set_title(label[:40], fontsize=9 if k else 11)
    top.legend(fontsize=8)
    top.set_ylabel("patents")
    for ax in axes.ravel()[cols + len(series) - 1:]:
        ax.remove()
    _save(fig, path)


def parameter_table(names: list[str], values: np.ndarray, se: np.ndarray, docs: dict[str, str]) -> pd.DataFrame:
    """Fitted parameters on their natural scale with standard errors and a 95% interval."""
    base = [n.split("[")[0] for n in names]
    return pd.DataFrame(
        {"parameter": names, "value": values, "se": se, "lower95": values - 1.96 * se, "upper95": values + 1.96 * se,
         "meaning": [docs.get(b, "") for b in base]}
    )


def nb_deviance(observed: np.ndarray, mean: np.ndarray, dispersion: float) -> float:
    """Negative binomial deviance over observed cells (NaN cells skipped)."""
    y, mu, r = observed, mean, dispersion
    mask = ~np.isnan(y)
    y, mu = y[mask], mu[mask]
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(y > 0, y * np.log(y / mu), 0.0)
    second = (y + r) * np.log((y + r) / (mu + r))
    return float(2 * np.sum(first - second))


def fit_summary(observed: np.ndarray, fitted: np.ndarray, dispersion: float) -> dict:
    """Deviance explained against two nulls, and per-region error quantiles."""
    constant = np.full_like(observed, np.nanmean(observed))
    region_mean = np.broadcast_to(np.nanmean(observed, axis=0, keepdims=True), observed.shape)
    d_model = nb_deviance(observed, fitted, dispersion)
    log_error = np.nanmean(np.abs(np.log1p(fitted) - np.log1p(observed)), axis=0)
    rel_error = np.nanmean(np.abs(fitted - observed) / np.maximum(observed, 1.0), axis=0)
    return dict(
        deviance=d_model,
        deviance_explained_vs_constant=1 - d_model / nb_deviance(observed, constant, dispersion),
        deviance_explained_vs_region_mean=1 - d_model / nb_deviance(observed, region_mean, dispersion),
        region_abs_log_error_quantiles={q: float(np.nanquantile(log_error, q)) for q in (0.1, 0.5, 0.9)},
        region_relative_error_quantiles={q: float(np.nanquantile(rel_error, q)) for q in (0.1, 0.5, 0.9)},
    )


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------


def plot_allocation(spend: np.ndarray, regions, levers, path: Path, *, title: str = "spending by region and lever") -> None:
    """Heat map of spending, regions x levers (summed over years); at most 60 regions by spend."""
    plt = _pyplot()
    order = np.argsort(-spend.sum(1))[:60]
    fig, ax = plt.subplots(figsize=(2 + 1.1 * len(levers), 1.5 + 0.22 * len(order)), constrained_layout=True)
    image = ax.imshow(spend[order], aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(levers)), [name.replace("_", " ") for name in levers], rotation=30, ha="right")
    ax.set_yticks(range(len(order)), [str(regions[i])[:32] for i in order], fontsize=7)
    fig.colorbar(image, ax=ax, label="spending over the horizon")
    ax.set_title(title)
    _save(fig, path)


def plot_policy_history(history: list[float], baselines: dict[str, float], path: Path) -> None:
    """The gradient method's objective over steps, with each baseline's best as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    ax.plot(np.arange(1, len(history) + 1), history, color="k", label="gradient (projected Adam)")
    for i, (name, value) in enumerate(baselines.items()):
        ax.axhline(value, ls="--", color=f"C{i}", label=name.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("objective")
    ax.legend(fontsize=8)
    _save(fig, path)
