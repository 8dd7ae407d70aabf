"""Parameter recovery under heterogeneity: fit the model to panels it simulated itself.

    nice -n 10 .venv/bin/python experiments/recovery/run.py [--replicates 20] [--regions 150] \
        [--steps 400] [--restarts 2] [--seed 0] [--out experiments/recovery/results]

On the real regions (drivers, ties, first-year patents and linkage totals of the largest
`--regions` US metros), each replicate draws new latent region effects (attraction, buzz quality),
national year innovations, negative binomial patent counts and beta-binomial non-local
connection counts from known parameters, calibrates the model to them as `diffcomm calibrate`
does (same free parameters, same prior), and compares estimates, standard errors and 90%
intervals with the truth.

Writes into `--out`: `recovery.csv` (one row per replicate and parameter, appended as replicates
finish: an interrupted run resumes and skips the replicates already there), `fits.csv` (per
replicate: seconds, steps, loss, positive definiteness), `summary.json` and `recovery.png`.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)  # the calibration's Hessian needs double precision

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from diffcomm.calibrate import calibrate  # noqa: E402
from diffcomm.cli import use_compilation_cache  # noqa: E402
from diffcomm.config import CalibrateConfig, DataConfig, FitConfig  # noqa: E402
from diffcomm.data import Dataset, load_dataset  # noqa: E402
from diffcomm.effects import Effects, Estimate  # noqa: E402
from diffcomm.loss import expected_patents  # noqa: E402
from diffcomm.observation import sample_counts  # noqa: E402
from diffcomm.params import Params  # noqa: E402
from diffcomm.report.posterior import DRIVER_WEIGHTS  # noqa: E402

log = logging.getLogger("recovery")

TRUTH = dict(connecting_weight=0.3, educating_weight=0.4, migrating_weight=0.2, specializing_weight=0.3,
             amenity_weight=0.2, attraction_scale=0.6, buzz_quality_scale=0.3, national_drift=0.01,
             national_shock_scale=0.05, national_persistence=0.5)
"""The true values that differ from the defaults (the others, e.g. the dispersions, are the defaults)."""

SCALES = ("attraction_scale", "buzz_quality_scale")
NATIONAL = ("national_drift", "national_shock_scale", "national_persistence")
REGION_EFFECTS = ["attraction", "buzz_quality"]  # drawn in every panel; fitted as `--fit-effects` says
SE_LIMIT = 0.25  # criterion: the standard error of every driver weight below this
COVERAGE_TARGET = (0.80, 0.97)  # criterion: 90% interval coverage over replicates x driver weights
COLUMNS = ["replicate", "parameter", "truth", "estimate", "se", "lower90", "upper90", "within_2se", "covered90"]
FIT_COLUMNS = ["replicate", "seconds", "simulate_seconds", "restart_steps", "restarts_converged", "polish_steps",
               "polish_converged", "best_loss", "positive_definite"]


# --------------------------------------------------------------------------------------------
# The synthetic panel
# --------------------------------------------------------------------------------------------


def largest_regions(count: int) -> list[str]:
    """Codes of the `count` regions with the most patents in the first year of the default data."""
    full = load_dataset(CalibrateConfig().data)
    order = np.argsort(-np.asarray(full.first_patents), kind="stable")[:count]
    return [full.codes[i] for i in order]


def true_params() -> Params:
    return Params.from_natural(1, **TRUTH)


def draw_effects(key: jax.Array, num_regions: int, num_years: int) -> Effects:
    """Standardized effects: N(0, 1) attraction, buzz quality and national innovations (any other
    effect the library defines stays at zero)."""
    k_attraction, k_buzz, k_year = jax.random.split(key, 3)
    draws = (jax.random.normal(k_attraction, (num_regions,)), jax.random.normal(k_buzz, (num_regions,)),
             jax.random.normal(k_year, (num_years,)))
    return eqx.tree_at(lambda e: (e.attraction, e.buzz_quality, e.year), Effects.zeros(num_regions, num_years), draws)


_expected = eqx.filter_jit(expected_patents)


def synthetic_panel(key: jax.Array, params: Params, data: Dataset) -> tuple[Dataset, Effects]:
    """`data` with its patents and non-local counts replaced by draws from the model at `params`
    with freshly drawn latent effects; masks, totals, drivers and ties kept."""
    k_effects, k_patents, k_share, k_links = jax.random.split(key, 4)
    effects = draw_effects(k_effects, data.num_regions, data.patents.shape[0])
    p = params.natural()
    mean, nonlocal_share = _expected(Estimate(params, effects), data)
    patents = sample_counts(k_patents, mean, p.patents_dispersion) * data.patents_mask
    # the linkage counts span the period: their mean is the share averaged over the fitted years
    share = jnp.sum(nonlocal_share * data.window[:, None], axis=0) / jnp.sum(data.window)
    c = p.nonlocal_concentration
    probability = jax.random.beta(k_share, c * share, c * (1.0 - share))
    nonlocal_count = jax.random.binomial(k_links, data.linkage_total, probability).astype(share.dtype) * data.linkage_mask
    return eqx.tree_at(lambda d: (d.patents, d.nonlocal_count), data, (patents, nonlocal_count)), effects


# --------------------------------------------------------------------------------------------
# One replicate
# --------------------------------------------------------------------------------------------


def truth_of(params: Params, name: str) -> float:
    """The natural value of a parameter name as the Laplace approximation writes it (`name[i]` per domain)."""
    base, _, index = name.partition("[")
    value = np.asarray(getattr(params.natural(), base))
    return float(value[int(index.rstrip("]"))] if index else value)


def replicate(r: int, *, seed: int, params: Params, data: Dataset, config: CalibrateConfig) -> tuple[list[dict], dict]:
    started = time.perf_counter()
    synthetic, _ = synthetic_panel(jax.random.fold_in(jax.random.key(seed), r), params, data)
    simulated = time.perf_counter() - started
    fit_config = dataclasses.replace(config.fit, seed=seed + r)  # other perturbed starts in every replicate
    calibration = calibrate(synthetic, dataclasses.replace(config, fit=fit_config))
    approx = calibration.laplace
    lower, upper = approx.interval(0.9)
    rows = []
    for i, name in enumerate(approx.parameter_names):
        truth, estimate, se = truth_of(params, name), float(approx.natural[i]), float(approx.natural_se[i])
        rows.append(dict(replicate=r, parameter=name, truth=truth, estimate=estimate, se=se, lower90=float(lower[i]),
                         upper90=float(upper[i]), within_2se=bool(abs(estimate - truth) <= 2 * se),
                         covered90=bool(lower[i] <= truth <= upper[i])))
    restarts, polished = calibration.restarts, calibration.polished
    fit = dict(replicate=r, seconds=round(time.perf_counter() - started, 2), simulate_seconds=round(simulated, 2),
               restart_steps=restarts.steps, restarts_converged=restarts.converged,
               polish_steps=polished.steps if polished else 0, polish_converged=polished.converged if polished else "",
               best_loss=calibration.result.best_loss, positive_definite=approx.positive_definite)
    return rows, fit


def scale_of(by: dict, name: str) -> tuple[float, float]:
    """A scale's estimate and se from a replicate's rows; NaN when the fit left it out."""
    row = by.get(name)
    return (row["estimate"], row["se"]) if row else (float("nan"), float("nan"))


def append_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)
        handle.flush()


def done_replicates(path: Path) -> set[int]:
    if not path.exists():
        return set()
    table = pd.read_csv(path)
    return set(int(r) for r in table.replicate.unique())


def read_replicates(csv_path: Path, fits_path: Path, replicates: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows and the fits of replicates 0..`replicates`-1 as appended (a rerun's fit kept last)."""
    table = pd.read_csv(csv_path)
    fits = pd.read_csv(fits_path).drop_duplicates("replicate", keep="last")
    return table[table.replicate < replicates], fits[fits.replicate < replicates]


# --------------------------------------------------------------------------------------------
# Summary and figure
# --------------------------------------------------------------------------------------------


def summarize(table: pd.DataFrame, fits: pd.DataFrame, settings: dict) -> dict:
    per_parameter = {}
    for name, group in table.groupby("parameter", sort=False):
        error = group.estimate - group.truth
        per_parameter[name] = dict(
            truth=float(group.truth.iloc[0]), mean_estimate=float(group.estimate.mean()), bias=float(error.mean()),
            sd_estimate=float(group.estimate.std(ddof=1)) if len(group) > 1 else float("nan"),
            rmse=float(np.sqrt(np.mean(error**2))), mean_se=float(group.se.mean()), max_se=float(group.se.max()),
            within_2se=float(group.within_2se.mean()), coverage90=float(group.covered90.mean()),
            replicates=int(len(group)))
    weights = table[table.parameter.isin(DRIVER_WEIGHTS)]
    coverage = float(weights.covered90.mean())
    criteria = dict(
        within_2se_share=float(weights.within_2se.mean()),
        se_below_limit_share=float((weights.se < SE_LIMIT).mean()),
        se_max=float(weights.se.max()),
        se_limit=SE_LIMIT,
        coverage90=coverage,
        coverage90_cells=int(len(weights)),
        coverage_target=list(COVERAGE_TARGET),
        coverage_ok=bool(COVERAGE_TARGET[0] <= coverage <= COVERAGE_TARGET[1]),
        nonfinite_se=int((~np.isfinite(weights.se)).sum()),
    )
    timing = dict(fits=int(len(fits)), seconds_per_fit_mean=float(fits.seconds.mean()),
                  seconds_per_fit_median=float(fits.seconds.median()), seconds_per_fit_max=float(fits.seconds.max()),
                  first_fit_seconds=float(fits.sort_values("replicate").seconds.iloc[0]),
                  positive_definite=int(fits.positive_definite.astype(bool).sum()),
                  restarts_converged=int(fits.restarts_converged.astype(bool).sum()),
                  polish_converged=int((fits.polish_converged.astype(str) == "True").sum()),
                  mean_restart_steps=float(fits.restart_steps.mean()), mean_polish_steps=float(fits.polish_steps.mean()))
    return dict(settings=settings, driver_weight_criteria=criteria, fits=timing, parameters=per_parameter)


def plot(table: pd.DataFrame, path: Path, *, title: str) -> None:
    """Estimates with 90% intervals against the truth, replicate by replicate, for the driver weights
    and the two effect scales; the last panel: standardized errors of the driver weights."""
    names = [name for name in (*DRIVER_WEIGHTS, *SCALES) if name in set(table.parameter)]  # a scale not fitted is left out
    defaults = Params.from_natural(1).natural()
    prior_centre = {name: float(getattr(defaults, name)) for name in names}
    fig = Figure(figsize=(15, 7.2), layout="constrained")
    axes = fig.subplots(2, 4)
    for ax, name in zip(axes.flat, names):
        group = table[table.parameter == name].sort_values("replicate")
        truth = float(group.truth.iloc[0])
        x = group.replicate.to_numpy()
        covered = group.covered90.to_numpy(dtype=bool)
        for mask, color, label in ((covered, "tab:blue", "90% interval covers truth"), (~covered, "tab:red", "misses truth")):
            if mask.any():
                est = group.estimate.to_numpy()[mask]
                ax.errorbar(x[mask], est, yerr=[est - group.lower90.to_numpy()[mask], group.upper90.to_numpy()[mask] - est],
                            fmt="o", ms=4, color=color, ecolor=color, elinewidth=1.2, capsize=2, label=label)
        ax.axhline(truth, color="black", lw=1.2, ls="--", label="truth")
        ax.axhline(prior_centre[name], color="tab:green", lw=1.0, ls=":", label="prior centre (default)")
        if name in SCALES:
            ax.axhline(0.0, color="grey", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{name} (truth {truth:g})\ncoverage {group.covered90.mean():.0%}, "
                     f"mean se {group.se.mean():.3f}", fontsize=10)
        ax.set_xlabel("replicate")
        ax.grid(alpha=0.3)
    seen = {}  # one legend entry per label over the panels (a panel may have no misses)
    for ax in axes.flat[:len(names)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=len(seen), fontsize=9)
    ax = axes.flat[len(names)]
    weights = table[table.parameter.isin(DRIVER_WEIGHTS)]
    z = ((weights.estimate - weights.truth) / weights.se).to_numpy()
    z = z[np.isfinite(z)]
    bins = np.linspace(-4, 4, 17)
    ax.hist(np.clip(z, -3.99, 3.99), bins=bins, density=True, color="tab:blue", alpha=0.6, label="driver weights")
    grid = np.linspace(-4, 4, 200)
    ax.plot(grid, np.exp(-grid**2 / 2) / math.sqrt(2 * math.pi), color="black", lw=1.2, label="N(0, 1)")
    ax.set_title(f"(estimate - truth) / se, driver weights\n{len(z)} cells, "
                 f"{np.mean(np.abs(z) <= 2):.0%} within 2 se", fontsize=10)
    ax.set_xlabel("standardized error (clipped at ±4)")
    ax.legend(fontsize=8)
    for unused in axes.flat[len(names) + 1:]:
        unused.set_visible(False)
    fig.suptitle(title, fontsize=12)
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--regions", type=int, default=150)
    parser.add_argument("--steps", type=int, default=400, help="Adam steps of the restarts (fit.steps)")
    parser.add_argument("--restarts", type=int, default=2, help="starts fitted together (fit.restarts)")
    parser.add_argument("--polish-steps", type=int, default=FitConfig().polish_steps, help="L-BFGS steps (fit.polish_steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("experiments/recovery/results"))
    parser.add_argument("--fit-effects", nargs="*", default=REGION_EFFECTS, choices=REGION_EFFECTS,
                        help="the region effects the fit estimates (fit.region_effects; the panels always have both)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffcomm").setLevel(logging.WARNING)  # one line per replicate is ours
    use_compilation_cache("auto")  # keep compiled programs between runs, as `diffcomm calibrate` does
    args.out.mkdir(parents=True, exist_ok=True)

    codes = largest_regions(args.regions)
    data_config = DataConfig(regions=codes)
    data = load_dataset(data_config)
    fit_config = FitConfig(region_effects=list(args.fit_effects), restarts=args.restarts, steps=args.steps,
                           polish_steps=args.polish_steps, seed=args.seed, progress=False)
    config = CalibrateConfig(data=data_config, fit=fit_config)
    params = true_params()
    settings = dict(replicates=args.replicates, regions=data.num_regions, years=list(data.years[1:]),
                    linkage_regions=int(np.asarray(data.linkage_mask).sum()), steps=args.steps, restarts=args.restarts,
                    polish_steps=args.polish_steps, seed=args.seed, region_effects=list(args.fit_effects),
                    free=list(fit_config.free), prior_scale=fit_config.prior_scale, truth=TRUTH)
    log.info("%d regions (%d with linkage counts), fitted years %d-%d; %d replicates, %d restarts x %d steps",
             data.num_regions, settings["linkage_regions"], data.years[1], data.years[-1], args.replicates, args.restarts,
             args.steps)

    csv_path, fits_path = args.out / "recovery.csv", args.out / "fits.csv"
    done = done_replicates(csv_path)
    if done:
        log.info("resuming: replicates %s already in %s", sorted(done), csv_path)
    for r in range(args.replicates):
        if r in done:
            continue
        rows, fit = replicate(r, seed=args.seed, params=params, data=data, config=config)
        append_rows(csv_path, COLUMNS, rows)
        append_rows(fits_path, FIT_COLUMNS, [fit])
        by = {row["parameter"]: row for row in rows}
        weights = [by[n] for n in DRIVER_WEIGHTS]
        log.info("replicate %d: %.1f s (restarts %d steps, polish %d), PD %s | weights %s | within 2se %d/5, covered %d/5, "
                 "max se %.3f | attraction_scale %.3f (se %.3f), buzz_quality_scale %.3f (se %.3f)",
                 r, fit["seconds"], fit["restart_steps"], fit["polish_steps"], fit["positive_definite"],
                 " ".join(f"{row['estimate']:.2f}" for row in weights), sum(row["within_2se"] for row in weights),
                 sum(row["covered90"] for row in weights), max(row["se"] for row in weights),
                 *scale_of(by, "attraction_scale"), *scale_of(by, "buzz_quality_scale"))

    table, fits = read_replicates(csv_path, fits_path, args.replicates)
    summary = summarize(table, fits, settings)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(table, args.out / "recovery.png", title=f"parameter recovery: {table.replicate.nunique()} synthetic panels on the "
                                                  f"{data.num_regions} US regions with the most patents in {data.years[0]}, "
                                                  f"fitted {data.years[1]}-{data.years[-1]}")
    c = summary["driver_weight_criteria"]
    log.info("driver weights: within 2 se %.0f%%, se < %.2f %.0f%% (max %.3f), 90%% coverage %.1f%% (target %.0f-%.0f%%)",
             100 * c["within_2se_share"], SE_LIMIT, 100 * c["se_below_limit_share"], c["se_max"], 100 * c["coverage90"],
             100 * COVERAGE_TARGET[0], 100 * COVERAGE_TARGET[1])
    log.info("wrote %s", ", ".join(str(args.out / n) for n in ("recovery.csv", "fits.csv", "summary.json", "recovery.png")))


if __name__ == "__main__":
    main()
