"""Figures of every command, drawn with matplotlib's object API (no pyplot, no global backend).

Each function writes one PNG. Panels of regions sit in a grid below a full-width aggregate
panel; legends sit outside the data; a forecast is drawn from the observation it conditions on,
so the line starts where the data end instead of jumping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..ensemble import SUMMED, Ensemble
from ..files import atomic_path
from ..scenario import Scenario
from ..simulate import Trajectory
from .tables import trajectory_arrays

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


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def plot_archetype_trajectories(scenario: Scenario, traj: Trajectory, path: Path, *, title: str = "",
                                shock: tuple[int, int] | None = None) -> None:
    """One panel per main variable; a line per archetype (mean) with its 10-90% band; `shock`:
    its first and last year, shaded."""
    arrays = trajectory_arrays(traj)
    fig = Figure(figsize=(16, 7.5), layout="constrained")
    axes = fig.subplots(2, 4)
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if shock is not None:
            ax.axvspan(shock[0] - 0.5, shock[1] + 0.5, color="0.85", zorder=0, label="shock")
        if variable in ("active", "knowledge", "patents"):
            ax.set_yscale("log")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), title="mean and 10-90% band of each archetype")
    if title:
        fig.suptitle(title)
    _save(fig, path)


ENSEMBLE_PANELS = (("patents", "patents (sum over regions)"), ("exports_intensity", "exports intensity (mean)"),
                   ("nonlocal_share", "non-local share of connections (mean)"), ("development", "development (mean)"))


def plot_ensemble(ensemble: Ensemble, path: Path, *, title: str = "") -> None:
    """One panel per main variable, aggregated over regions; per scenario the median over the
    draws and its 5-95% band."""
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    axes = fig.subplots(2, 2)
    for ax, (variable, label) in zip(axes.ravel(), ENSEMBLE_PANELS):
        for s, scenario in enumerate(ensemble.scenarios):
            values = ensemble.aggregates[variable][s]  # (N, T)
            (line,) = ax.plot(ensemble.years, np.median(values, axis=0), label=scenario)
            if ensemble.draws > 1:
                ax.fill_between(ensemble.years, *np.quantile(values, [0.05, 0.95], axis=0), color=line.get_color(), alpha=0.2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("year")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if variable in SUMMED:
            ax.set_yscale("log")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    band = f"median and 5-95% band over {ensemble.draws} parameter draws" if ensemble.draws > 1 else "one parameter set"
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), title=f"scenario: {band}")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_loss_history(history: dict, path: Path, *, final: float | None = None, title: str = "calibration") -> None:
    """Loss of every start over the steps, as its excess over `final` (the loss the calibration
    ended with, after the polish; default: the best reached here) on a log scale."""
    loss = np.asarray(history["loss"], dtype=float)
    reference = np.nanmin(loss) if final is None else final
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    steps = np.arange(1, len(loss) + 1)
    for r in range(loss.shape[1]):
        ax.plot(steps, np.maximum(loss[:, r] - reference, 1e-12), lw=1, label=f"start {r}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss per observation − {reference:.6g}")
    ax.set_yscale("log")
    ax.set_title(f"{title}: each start's loss above the final one")
    ax.legend(fontsize=8, loc="upper right")
    _save(fig, path)


def plot_observed_vs_model(
    years: np.ndarray,
    observed: np.ndarray,
    mean: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    names: tuple[str, ...],
    path: Path,
    *,
    level: float = 0.9,
    largest: int = 12,
    origin_year: int | None = None,
    extra: dict[str, np.ndarray] | None = None,
    total: tuple[np.ndarray, np.ndarray] | None = None,
    title: str = "",
) -> None:
    """All regions together, then the largest regions: observed points, the model and its band.

    Arrays are (T, R) over `years`; NaN in `observed` where there is no observation. With
    `origin_year` the years up to it are the model's fit (a thin line) and the later ones a
    forecast conditioned on the count observed at the origin: the forecast line, its band and
    the `extra` lines (name -> values (T, R), e.g. baselines) start from that count. `total`:
    the interval of the sum over regions (T,) each, drawn in the first panel (without it, the sum
    of the regions' bounds, which is wider, and labelled so).
    """
    order = np.argsort(-np.nansum(observed, axis=0))[:largest]
    cols = 4
    rows = int(np.ceil(len(order) / cols))
    fig = Figure(figsize=(16, 3.1 * (rows + 1.3)), layout="constrained")
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.3] + [1] * rows)
    panels = [(fig.add_subplot(grid[0, :]), "all regions", _total)]
    panels += [(fig.add_subplot(grid[1 + k // cols, k % cols]), names[i][:40], _column(i)) for k, i in enumerate(order)]
    ahead = np.ones(len(years), bool) if origin_year is None else years >= origin_year
    fitted = None if origin_year is None else years <= origin_year
    for ax, label, pick in panels:
        start = None if origin_year is None else pick(observed)[years == origin_year]

        def from_origin(line):  # the forecast years of a line, starting at the observation at the origin
            line = line[ahead].astype(float)
            if start is not None and len(start) and np.isfinite(start[0]):
                line[0] = start[0]
            return line

        if pick is _total and total is not None:
            low, high, band = total[0], total[1], f"{100 * level:g}% interval (of the total; below, of each region)"
        else:
            low, high = pick(lower), pick(upper)
            band = f"{100 * level:g}% interval" + (" (sum of the regions' bounds)" if pick is _total else "")
        ax.fill_between(years[ahead], from_origin(low), from_origin(high), alpha=0.2, color="C0", label=band)
        ax.plot(years[ahead], from_origin(pick(mean)), color="C0", label="model" if origin_year is None else "model forecast")
        if fitted is not None:
            ax.plot(years[fitted], pick(mean)[fitted], color="C0", lw=1, ls=":", label="model fit")
            ax.axvline(origin_year, color="0.6", lw=0.8)
        for j, (name, values) in enumerate((extra or {}).items()):
            ax.plot(years[ahead], from_origin(pick(values)), ls="--", color=f"C{j + 1}", label=name)
        seen = np.isfinite(pick(observed))
        ax.plot(years[seen], pick(observed)[seen], "o", color="k", ms=3, label="observed")
        ax.set_title(label, fontsize=11 if pick is _total else 9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12 if pick is _total else 5))
    panels[0][0].set_ylabel("patents")
    fig.legend(*panels[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=6)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def _column(i: int):
    return lambda values: values[:, i]


def _total(values: np.ndarray) -> np.ndarray:
    """Sum over regions per year; NaN for a year with no value at all (not a zero)."""
    total = np.nansum(values, axis=1)
    return np.where(np.isfinite(values).any(axis=1), total, np.nan)


def plot_allocation(spend: np.ndarray, regions, levers, path: Path, *, title: str = "spending by region and lever") -> None:
    """Heat map of spending, regions x levers (summed over years); at most 60 regions by spend."""
    order = np.argsort(-spend.sum(1))[:60]
    fig = Figure(figsize=(2 + 1.1 * len(levers), 1.5 + 0.22 * len(order)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(spend[order], aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(levers)), [name.replace("_", " ") for name in levers], rotation=30, ha="right")
    ax.set_yticks(range(len(order)), [str(regions[i])[:48] for i in order], fontsize=7)
    fig.colorbar(image, ax=ax, label="spending over the horizon")
    ax.set_title(title)
    _save(fig, path)


def plot_policy_history(history: list[float], baselines: dict[str, float], path: Path) -> None:
    """The gradient method's objective over steps, with each baseline's best as a line."""
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(np.arange(1, len(history) + 1), history, color="k", label="gradient (mirror ascent)")
    for i, (name, value) in enumerate(baselines.items()):
        ax.axhline(value, ls="--", color=f"C{i}", label=f"{name.replace('_', ' ')} (best)")
    ax.set_xlabel("step")
    ax.set_ylabel("objective (1 = no policy)")
    fig.legend(loc="outside right upper", fontsize=8)
    _save(fig, path)


def plot_robustness(values: dict[str, np.ndarray], path: Path) -> None:
    """Allocations judged on held-out parameter draws: the distribution (ECDF) of each one's
    objective, and per draw the robust allocation's objective less the estimate's optimum's."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, (name, v) in enumerate(values.items()):
        x = np.sort(v)
        left.step(x, np.arange(1, len(x) + 1) / len(x), where="post", color=f"C{i}", label=name.replace("_", " "))
    left.set_xlabel("objective under a held-out draw (1 = no policy)")
    left.set_ylabel("share of draws at or below")
    left.legend(fontsize=8)
    difference = values["robust"] - values["estimate_optimal"]
    right.hist(difference, bins=min(30, max(5, len(difference) // 3)), color="C0")
    right.axvline(0.0, color="k", lw=1)
    right.set_xlabel("robust minus estimate's optimum, same draw")
    right.set_ylabel("draws")
    right.set_title(f"robust better in {np.mean(difference > 0):.0%} of draws", fontsize=9)
    _save(fig, path)


def plot_evaluation(table, path: Path) -> None:
    """The rolling-origin scores: mean absolute log error and the 90% interval score per origin
    (grouped bars, one colour per method; lower is better), and the 90% coverage."""
    methods = list(dict.fromkeys(table["method"]))
    origins = sorted(set(table["origin"]))
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    axes = fig.subplots(1, 3)
    width = 0.8 / len(methods)
    for ax, (metric, label) in zip(axes, [("male", "mean absolute log error"), ("interval_90", "interval score, 90% (log scale)"),
                                          ("coverage_90", "coverage of the 90% interval")]):
        for j, method in enumerate(methods):
            rows = table[table["method"] == method].set_index("origin").reindex(origins)
            ax.bar(np.arange(len(origins)) + (j - (len(methods) - 1) / 2) * width, rows[metric], width, label=method,
                   color=f"C{j}")
        ax.set_xticks(np.arange(len(origins)), [f"fit to {o}" for o in origins])
        ax.set_title(label, fontsize=10)
        if metric == "coverage_90":
            ax.axhspan(0.85, 0.95, color="0.85", zorder=0)
            ax.set_ylim(0.5, 1.0)
        else:
            low = np.nanmin(table[metric]) * 0.9
            ax.set_ylim(low, np.nanmax(table[metric]) * 1.03)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(methods), fontsize=9)
    fig.suptitle("Rolling origin: forecasts of the next years from each origin (lower is better; coverage target shaded)")
    _save(fig, path)


def plot_communities(observed: np.ndarray, fitted: np.ndarray, states, fields, path: Path, *, period: str) -> None:
    """Community size by field and state in one period: observed and fitted inventors (log colour
    scale, one shared scale; empty cells blank) and their log ratio."""
    fig = Figure(figsize=(15, 10), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    shown = np.where(np.isfinite(observed), fitted, np.nan)
    low, high = np.log10(np.nanmin(observed)), np.log10(max(np.nanmax(observed), np.nanmax(fitted)))
    for ax, values, title in ((axes[0], observed, "observed inventors"), (axes[1], shown, "fitted (where observed)")):
        image = ax.imshow(np.log10(values), aspect="auto", cmap="viridis", vmin=low, vmax=high, interpolation="none")
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=axes[:2], label="log10 inventors", shrink=0.6, location="bottom")
    ratio = np.log(shown / observed)
    limit = np.nanmax(np.abs(ratio))
    image = axes[2].imshow(ratio, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="none")
    axes[2].set_title("log(fitted / observed)", fontsize=10)
    fig.colorbar(image, ax=axes[2], shrink=0.6, location="bottom")
    for ax in axes:
        ax.set_xticks(np.arange(len(fields)), [f[:22] for f in fields], rotation=70, ha="right", fontsize=7)
    axes[0].set_yticks(np.arange(len(states)), states, fontsize=7)
    fig.suptitle(f"Community size by field and state, period starting {period} (blank: fewer than 30 inventors)")
    _save(fig, path)


def plot_field_paths(periods, observed: np.ndarray, fitted: np.ndarray, fields, path: Path) -> None:
    """Per field, inventors summed over the states observed in each period: observed (dots) and
    fitted (line)."""
    columns = 4
    rows = -(-len(fields) // columns)
    fig = Figure(figsize=(15, 3 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    seen = np.isfinite(observed)
    for k, (ax, field) in enumerate(zip(axes, fields)):
        ax.plot(periods, np.where(seen[:, :, k], observed[:, :, k], 0).sum(1), "o", color="k", ms=4, label="observed")
        ax.plot(periods, np.where(seen[:, :, k], fitted[:, :, k], 0).sum(1), color="C0", lw=1.5, label="fitted")
        ax.set_title(field, fontsize=9)
        ax.yaxis.set_major_locator(MaxNLocator(4))
    for ax in axes[len(fields):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9)
    fig.suptitle("Inventors per field, summed over the states observed in each period")
    _save(fig, path)
