"""Simulation-based calibration of the Laplace approximation or of NUTS: parameters drawn from the prior, fitted again.

    nice -n 10 .venv/bin/python experiments/sbc/run.py [--replicates 100] [--regions 150] \
        [--last-year 2008] [--prior-scale 0.5] [--draws 99] [--seed 0] [--out experiments/sbc/results] \
        [--method laplace|nuts] [--nuts-chains 2] [--nuts-warmup 150] [--nuts-draws 100]

Each replicate draws every free parameter of `diffcomm calibrate` from the calibration's own prior
(independent normals of sd `--prior-scale` around the defaults, on the unconstrained scale),
simulates a panel on the real regions with freshly drawn latent effects
(`experiments/recovery/run.py`'s `synthetic_panel`), calibrates with that same prior, and ranks
the true value among `--draws` draws of the Laplace approximation's marginal. If the
approximation is the posterior, each rank is uniform on 0..draws and each central interval covers
the truth at its level (Talts et al. 2018, "Validating Bayesian inference algorithms with
simulation-based calibration").

With `--method nuts` the same fit is followed by NUTS (`posterior.sample_posterior`, the sampler of
`diffcomm calibrate inference=nuts`), and the truth is ranked among `--draws` of its draws, spaced
evenly through each chain; the intervals are the draws' central quantiles, and `fits.csv` also
records each replicate's sampler: divergences, tree sizes, and the worst R-hat and bulk ESS of the
driver weights.

Writes into `--out`: `ranks.csv` (one row per replicate and parameter, appended as replicates
finish: an interrupted run resumes), `fits.csv`, `summary.json` and `sbc.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import math
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # the Laplace approximation needs double precision

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from diffcomm.calibrate import calibrate, calibration_prior  # noqa: E402
from diffcomm.cli import use_compilation_cache  # noqa: E402
from diffcomm.config import CalibrateConfig, DataConfig, EvaluationConfig, FitConfig, NutsConfig  # noqa: E402
from diffcomm.data import load_dataset  # noqa: E402
from diffcomm.params import Params  # noqa: E402


def _recovery():
    """The panel simulator of the recovery study, one file beside this one's folder."""
    path = Path(__file__).parents[1] / "recovery" / "run.py"
    spec = importlib.util.spec_from_file_location("recovery_study", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


recovery = _recovery()
log = logging.getLogger("sbc")

COLUMNS = ["replicate", "parameter", "truth", "mean", "sd", "rank", "z", "covered50", "covered90"]
FIT_COLUMNS = ["replicate", "seconds", "restart_steps", "polish_steps", "polish_converged", "best_loss", "positive_definite"]
NUTS_COLUMNS = ["nuts_seconds", "divergent", "warmup_divergent", "mean_leapfrogs", "max_rhat_weights", "min_ess_weights"]
SHOWN = (*recovery.DRIVER_WEIGHTS, *recovery.SCALES, "buzz_scale")
Z50, Z90 = 0.6744897501960817, 1.6448536269514722


def prior_draw(key: jax.Array, config: CalibrateConfig) -> Params:
    """Every free parameter drawn from the calibration's prior; the others at its centre."""
    prior = calibration_prior(config)
    values = dict(prior.centre.unconstrained)
    keys = jax.random.split(key, len(prior.free))
    for k, name in zip(keys, prior.free):
        values[name] = values[name] + prior.scale * jax.random.normal(k, jnp.shape(values[name]), dtype=float)
    return Params(type(prior.centre.unconstrained)(values))


def replicate(r: int, *, seed: int, data, config: CalibrateConfig, draws: int,
              nuts: NutsConfig | None = None) -> tuple[list[dict], dict]:
    started = time.perf_counter()
    k_truth, k_panel, k_rank = jax.random.split(jax.random.fold_in(jax.random.key(seed), r), 3)
    truth = prior_draw(k_truth, config)
    synthetic, _ = recovery.synthetic_panel(k_panel, truth, data)
    calibration = calibrate(synthetic, dataclasses.replace(config, fit=dataclasses.replace(config.fit, seed=seed + r)))
    approx = calibration.laplace
    sd = np.sqrt(np.clip(np.diag(approx.covariance), 0.0, None))
    samples = None if nuts is None else _nuts_samples(calibration, synthetic, nuts, seed + r)
    rows = []
    for i, name in enumerate(approx.parameter_names):
        true_value = float(truth.unconstrained[name])
        if samples is None:  # the Laplace marginal: Gaussian, so its intervals are mean -/+ z sd
            sample = approx.mean[i] + sd[i] * np.asarray(jax.random.normal(jax.random.fold_in(k_rank, i), (draws,)))
            mean, spread = float(approx.mean[i]), float(sd[i])
            z = (true_value - mean) / spread if spread > 0 else float("nan")
            covered50, covered90 = abs(z) <= Z50, abs(z) <= Z90
        else:  # NUTS: every draw for the moments and intervals, `draws` evenly spaced ones for the rank
            flat = samples[name].reshape(-1)
            sample = flat[np.round(np.linspace(0, flat.size - 1, draws)).astype(int)]
            mean, spread = float(flat.mean()), float(flat.std(ddof=1))
            z = (true_value - mean) / spread
            q = np.quantile(flat, [0.05, 0.25, 0.75, 0.95])
            covered50, covered90 = q[1] <= true_value <= q[2], q[0] <= true_value <= q[3]
        rows.append(dict(replicate=r, parameter=name, truth=true_value, mean=mean, sd=spread,
                         rank=int(np.sum(sample < true_value)), z=float(z), covered50=bool(covered50),
                         covered90=bool(covered90)))
    polished = calibration.polished
    fit = dict(replicate=r, seconds=round(time.perf_counter() - started, 2), restart_steps=calibration.restarts.steps,
               polish_steps=polished.steps if polished else 0, polish_converged=polished.converged if polished else "",
               best_loss=calibration.result.best_loss, positive_definite=approx.positive_definite)
    if samples is not None:
        fit.update(samples["sampler"])
    return rows, fit


def _nuts_samples(calibration, synthetic, nuts: NutsConfig, seed: int) -> dict:
    """Each free parameter's NUTS draws (chains, draws) on the unconstrained scale, and the sampler's numbers."""
    from diffcomm.posterior import sample_posterior
    from diffcomm.report.posterior import _arviz

    az = _arviz()

    started = time.perf_counter()
    posterior = sample_posterior(calibration, synthetic, dataclasses.replace(nuts, seed=seed), progress=False)
    out = {name: posterior.draws[..., posterior.global_index[j]] for j, name in enumerate(posterior.parameter_names)}
    weights = [out[name] for name in recovery.DRIVER_WEIGHTS]
    out["sampler"] = dict(nuts_seconds=round(time.perf_counter() - started, 2), divergent=int(posterior.divergent.sum()),
                          warmup_divergent=posterior.warmup_divergent,
                          mean_leapfrogs=round(float(posterior.leapfrogs.mean()), 1),
                          max_rhat_weights=round(max(float(az.rhat(w)) for w in weights), 4),
                          min_ess_weights=round(min(float(az.ess(w)) for w in weights), 1))
    return out


def binomial_band(n: int, p: float, level: float = 0.99) -> tuple[int, int]:
    """The central `level` interval of Binomial(n, p) counts."""
    cdf = np.cumsum([math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)])
    return int(np.searchsorted(cdf, (1 - level) / 2)), int(np.searchsorted(cdf, 1 - (1 - level) / 2))


def summarize(table: pd.DataFrame, fits: pd.DataFrame, settings: dict, bins: int) -> dict:
    parameters = {}
    for name, group in table.groupby("parameter", sort=False):
        counts = np.bincount(np.minimum(group["rank"].to_numpy() * bins // (settings["draws"] + 1), bins - 1), minlength=bins)
        expected = len(group) / bins
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        p_value = float(jax.scipy.special.gammaincc((bins - 1) / 2, chi2 / 2))
        parameters[name] = dict(replicates=int(len(group)), coverage50=float(group.covered50.mean()),
                                coverage90=float(group.covered90.mean()), z_mean=float(group.z.mean()),
                                z_sd=float(group.z.std(ddof=1)), rank_counts=counts.tolist(), chi2=chi2,
                                uniformity_p=p_value)
    timing = dict(fits=int(len(fits)), seconds_median=float(fits.seconds.median()), seconds_max=float(fits.seconds.max()),
                  positive_definite=int(fits.positive_definite.astype(bool).sum()),
                  polish_converged=int((fits.polish_converged.astype(str) == "True").sum()))
    if "nuts_seconds" in fits:
        timing.update(nuts_seconds_median=float(fits.nuts_seconds.median()), divergent=int(fits.divergent.sum()),
                      replicates_with_divergences=int((fits.divergent > 0).sum()),
                      max_rhat_weights=dict(median=float(fits.max_rhat_weights.median()), max=float(fits.max_rhat_weights.max()),
                                            above_1_05=int((fits.max_rhat_weights > 1.05).sum())),
                      min_ess_weights_median=float(fits.min_ess_weights.median()))
    return dict(settings=settings, band99=binomial_band(int(table.replicate.nunique()), 1 / bins), fits=timing,
                parameters=parameters)


def plot(summary: dict, path: Path, *, bins: int) -> None:
    """Rank histograms of the driver weights and scales with the 99% band of uniform ranks, and
    the coverage of the 50% and 90% intervals of every free parameter."""
    fig = Figure(figsize=(19, 8.5), layout="constrained")
    grid = fig.add_gridspec(2, 6)
    low, high = summary["band99"]
    for j, name in enumerate(SHOWN):
        ax = fig.add_subplot(grid[j // 4, j % 4])
        entry = summary["parameters"][name]
        ax.axhspan(low, high, color="grey", alpha=0.25, label="99% band of uniform ranks")
        ax.bar(np.arange(bins), entry["rank_counts"], width=0.9, color="tab:blue")
        ax.set_title(f"{name}\n50%: {entry['coverage50']:.0%} covered, 90%: {entry['coverage90']:.0%}, "
                     f"sd(z) {entry['z_sd']:.2f}", fontsize=9)
        ax.set_xticks([0, bins - 1], ["truth below\nevery draw", "above\nevery draw"], fontsize=8)
    ax = fig.add_subplot(grid[:, 4:])
    names = list(summary["parameters"])
    y = np.arange(len(names))
    for level, offset, color in ((50, -0.2, "tab:orange"), (90, 0.2, "tab:blue")):
        ax.barh(y + offset, [summary["parameters"][n][f"coverage{level}"] for n in names], height=0.4, color=color,
                label=f"{level}% interval")
        ax.axvline(level / 100, color=color, ls="--", lw=1)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of replicates covered (dashed: nominal)")
    ax.legend(fontsize=8, loc="lower right")
    n = summary["fits"]["fits"]
    method = "NUTS" if summary["settings"].get("method") == "nuts" else "the Laplace approximation"
    fig.suptitle(f"Simulation-based calibration of {method}: {n} replicates drawn from the prior "
                 f"(sd {summary['settings']['prior_scale']}), {summary['settings']['regions']} regions, "
                 f"{len(summary['settings']['years'])} fitted years", fontsize=12)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=100)
    parser.add_argument("--regions", type=int, default=150)
    parser.add_argument("--last-year", type=int, default=2008, help="2000 sets the state; 2001..last are fitted")
    parser.add_argument("--prior-scale", type=float, default=0.5, help="sd of the prior, in generation and fit alike")
    parser.add_argument("--draws", type=int, default=99, help="Laplace draws the truth is ranked among")
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("experiments/sbc/results"))
    parser.add_argument("--method", choices=("laplace", "nuts"), default="laplace", help="whose draws the truth is ranked among")
    parser.add_argument("--nuts-chains", type=int, default=2)
    parser.add_argument("--nuts-warmup", type=int, default=150)
    parser.add_argument("--nuts-draws", type=int, default=100)
    args = parser.parse_args(argv)
    nuts = NutsConfig(chains=args.nuts_chains, warmup=args.nuts_warmup, draws=args.nuts_draws) if args.method == "nuts" else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffcomm").setLevel(logging.WARNING)
    use_compilation_cache("auto")  # keep compiled programs between runs, as `diffcomm calibrate` does
    args.out.mkdir(parents=True, exist_ok=True)

    data_config = DataConfig(regions=recovery.largest_regions(args.regions), last_year=args.last_year)
    data = load_dataset(data_config)
    # both region effects, as the panels are drawn (`recovery.synthetic_panel`): the check is of the
    # approximation on a model that matches the data, not of the default's choice of effects
    config = CalibrateConfig(data=data_config, fit=FitConfig(region_effects=recovery.REGION_EFFECTS, restarts=2, steps=400,
                                                             prior_scale=args.prior_scale, seed=args.seed, progress=False),
                             evaluation=EvaluationConfig(origins=[args.last_year - 3]))  # not run; valid for the years
    settings = dict(replicates=args.replicates, regions=data.num_regions, years=[int(y) for y in data.years[1:]],
                    prior_scale=args.prior_scale, draws=args.draws, seed=args.seed, free=list(config.fit.free),
                    region_effects=list(config.fit.region_effects), restarts=2, steps=400,
                    polish_steps=config.fit.polish_steps, method=args.method,
                    **(dict(nuts=dataclasses.asdict(nuts)) if nuts else {}))
    ranks_path, fits_path = args.out / "ranks.csv", args.out / "fits.csv"
    done = recovery.done_replicates(ranks_path)
    log.info("%d regions, fitted years %d-%d, prior sd %g; %d replicates (%d already done)", data.num_regions,
             data.years[1], data.years[-1], args.prior_scale, args.replicates, len(done))
    for r in range(args.replicates):
        if r in done:
            continue
        rows, fit = replicate(r, seed=args.seed, data=data, config=config, draws=args.draws, nuts=nuts)
        recovery.append_rows(ranks_path, COLUMNS, rows)
        recovery.append_rows(fits_path, FIT_COLUMNS + (NUTS_COLUMNS if nuts else []), [fit])
        if nuts is not None:
            # the sampler's programs are traced anew for every panel (its density holds the data), and
            # the compiled ones are kept: after 18 replicates the process ran out of memory maps
            # ("LLVM ERROR: Unable to allocate section memory")
            jax.clear_caches()
        by = {row["parameter"]: row for row in rows}
        log.info("replicate %d: %.1f s, polish %d steps, PD %s | z of the weights %s%s", r, fit["seconds"], fit["polish_steps"],
                 fit["positive_definite"], " ".join(f"{by[n]['z']:+.2f}" for n in recovery.DRIVER_WEIGHTS),
                 "" if nuts is None else " | NUTS %.0f s, %d divergent, %.0f leapfrogs, R-hat <= %.3f, ESS >= %.0f" % tuple(
                     fit[k] for k in ("nuts_seconds", "divergent", "mean_leapfrogs", "max_rhat_weights", "min_ess_weights")))

    table, fits = recovery.read_replicates(ranks_path, fits_path, args.replicates)
    summary = summarize(table, fits, settings, args.bins)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, args.out / "sbc.png", bins=args.bins)
    for name in recovery.DRIVER_WEIGHTS:
        e = summary["parameters"][name]
        log.info("%s: coverage 50%% %.0f%%, 90%% %.0f%%, sd(z) %.2f, uniformity p %.3f", name, 100 * e["coverage50"],
                 100 * e["coverage90"], e["z_sd"], e["uniformity_p"])
    log.info("wrote %s", ", ".join(str(args.out / n) for n in ("ranks.csv", "fits.csv", "summary.json", "sbc.png")))


if __name__ == "__main__":
    main()
