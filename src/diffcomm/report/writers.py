"""What each command writes into its run folder, through `files.RunOutputs` (all or nothing,
`summary.json` last)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..calibrate import POSTERIOR_DRAWS, Calibration, save_calibration
from ..calibrate_domains import PanelCalibration, save_panel_calibration
from ..comparison import ROBUSTNESS_COLUMNS, Robust
from ..config import CalibrateConfig, OutputConfig
from ..data import Dataset
from ..data.panel import DomainDataset
from ..domains import fitted_inventors
from ..ensemble import Ensemble
from ..evaluation import MODEL, Evaluation
from ..files import RunOutputs
from ..forecast import Forecast
from ..policy import PolicyProblem, PolicyResult, evaluate, marginal_values, spend_per_year
from ..posterior import Posterior
from ..scenario import Scenario
from ..simulate import Trajectory
from ..training import check_stop
from . import figures
from . import posterior as inference
from .markdown import calibration_report, panel_report, policy_report
from .tables import archetype_summary, fit_summary, parameter_table, region_effects_table, trajectory_arrays, write_trajectories


def write_simulation(out: RunOutputs, scenario: Scenario, traj: Trajectory, output: OutputConfig, *, title: str,
                     seconds: float, config: dict, shock: tuple[int, int] | None = None) -> dict:
    """`trajectories.npz`, the tidy table (`trajectories.csv` or `.parquet`), `summary.csv`,
    `trajectories.png` and `summary.json`."""
    arrays = trajectory_arrays(traj)
    check_stop()
    with open(out.path("trajectories.npz"), "wb") as fh:
        np.savez_compressed(fh, region=np.asarray(scenario.region_names),
                            archetype=np.asarray(scenario.archetype_names)[scenario.archetype], **arrays)
    rows = write_trajectories(out.path(f"trajectories.{output.format}"), scenario, traj, form=output.format) if output.csv else 0
    table = archetype_summary(scenario, traj)
    table.to_csv(out.path("summary.csv"), index=False)
    check_stop()
    if output.figures:
        figures.plot_archetype_trajectories(scenario, traj, out.path("trajectories.png"), title=title, shock=shock)
    summary = dict(regions=scenario.num_regions, years=int(arrays["patents"].shape[0]),
                   domains=int(arrays["active"].shape[-1]) if "active" in arrays else None, rows=rows, seconds=seconds,
                   archetypes=table.to_dict(orient="records"), config=config,
                   files=sorted(p.name for p in out.staging.iterdir()) + ["summary.json"])
    out.finish(summary)
    return summary


def _ratio_summary(ratio: np.ndarray) -> dict:
    """Mean, 5% and 95% of ratios over the draws; None where a first scenario's total was 0."""
    if not np.isfinite(ratio).all():
        return dict(vs_first_mean=None, vs_first_q05=None, vs_first_q95=None)
    return dict(vs_first_mean=float(ratio.mean()), vs_first_q05=float(np.quantile(ratio, 0.05)),
                vs_first_q95=float(np.quantile(ratio, 0.95)))


def write_ensemble(out: RunOutputs, ensemble: Ensemble, *, title: str, draws_from: str, seconds: float,
                   config: dict) -> dict:
    """`ensemble.csv` (`Ensemble.table`), `ensemble_regions.csv` (`Ensemble.region_table`),
    `ensemble.png` and `summary.json`."""
    ensemble.table().to_csv(out.path("ensemble.csv"), index=False)
    check_stop()
    ensemble.region_table().to_csv(out.path("ensemble_regions.csv"), index=False)
    figures.plot_ensemble(ensemble, out.path("ensemble.png"), title=title)
    patents = ensemble.aggregates["patents"][:, :, -1]  # (S, N): the total in the last year
    with np.errstate(divide="ignore", invalid="ignore"):  # each draw's total against the first scenario's, same draw
        ratio = np.where(patents[:1] > 0, patents / patents[:1], np.nan)
    last = [dict(scenario=name, patents_mean=float(v.mean()), patents_q05=float(np.quantile(v, 0.05)),
                 patents_q95=float(np.quantile(v, 0.95)), **_ratio_summary(r))
            for name, v, r in zip(ensemble.scenarios, patents, ratio)]
    summary = dict(regions=len(ensemble.regions), years=[int(ensemble.years[0]), int(ensemble.years[-1])],
                   draws=ensemble.draws, parameter_draws=draws_from, scenarios=list(ensemble.scenarios),
                   ensemble=dict(last_year=last), seconds=seconds, config=config,
                   files=sorted(p.name for p in out.staging.iterdir()) + ["summary.json"])
    out.finish(summary)
    return summary


def history_table(history: dict[str, list]) -> pd.DataFrame:
    """A fit's history (`FitResult.history`) as `step, restart, loss, grad_norm`, one row per start and step."""
    return pd.DataFrame(
        [(s + 1, r, loss, grad) for s, (losses, grads) in enumerate(zip(history["loss"], history["grad_norm"]))
         for r, (loss, grad) in enumerate(zip(losses, grads))],
        columns=["step", "restart", "loss", "grad_norm"],
    )


def write_calibration(out: RunOutputs, config: CalibrateConfig, data: Dataset, calibration: Calibration,
                      band: dict[str, np.ndarray], evaluation: Evaluation | None, *, seconds: float, plain: dict,
                      posterior: Posterior | None = None) -> dict:
    """The estimate (`fitted.eqx`, `laplace.npz`, `calibration.json`), `params.csv`, `effects.csv`,
    `history.csv`, `loss.png`, `fit.png`, with an evaluation `evaluation.csv`, `evaluation.png` and
    `rolling_origin.png`, then `report.md` and `summary.json`."""
    save_calibration(calibration, out.staging)
    table = parameter_table(calibration.laplace)
    table.to_csv(out.path("params.csv"), index=False)
    region_effects_table(calibration, data).to_csv(out.path("effects.csv"), index=False)
    result = calibration.result
    restarts = calibration.restarts or result  # a warm-started calibration has only its polish
    history_table(restarts.history).to_csv(out.path("history.csv"), index=False)
    figures.plot_loss_history(restarts.history, out.path("loss.png"), final=result.best_loss)
    observed, years, level = data.observed_patents(), np.asarray(data.years[1:]), config.evaluation.level
    figures.plot_observed_vs_model(years, observed, band["fitted"], band["lower"], band["upper"], data.names,
                                   out.path("fit.png"), level=level, largest=config.evaluation.largest_regions,
                                   total=(band["total_lower"], band["total_upper"]),
                                   title=f"Observed and fitted patents, {data.years[1]}-{data.years[-1]} "
                                         f"(the counts of {data.years[0]} set the initial state)")
    summary = dict(
        regions=data.num_regions, years=[data.years[0], data.years[-1]], observations=int(data.num_observations),
        fitted_as="one step ahead" if data.one_step_ahead else "free path", spin_up_years=data.spin_up_years,
        region_effects=list(config.fit.region_effects), national_effects=config.fit.national_effects,
        fit=fit_summary(observed, band["fitted"], float(calibration.params.natural().patents_dispersion)),
        loss_per_observation=result.best_loss, restart_losses=restarts.best_losses.tolist(), steps=restarts.steps,
        converged=restarts.converged, polish_steps=calibration.polished.steps if calibration.polished else 0,
        polish_converged=calibration.polished.converged if calibration.polished else None,
        laplace_positive_definite=calibration.laplace.positive_definite, level=level, notes=list(data.notes),
    )
    if evaluation is not None:
        write_evaluation(out, config, data, evaluation, summary)
    if posterior is not None:
        write_posterior(out, data, calibration, posterior, summary)
    summary["seconds"], summary["config"] = seconds, plain
    (out.path("report.md")).write_text(calibration_report(summary, table))
    out.finish(summary)
    return summary


def write_panel_calibration(out: RunOutputs, config: CalibrateConfig, data: DomainDataset, calibration: PanelCalibration,
                            evaluation: pd.DataFrame | None, *, seconds: float, plain: dict) -> dict:
    """A calibration on a state x domain panel: `calibration.json`, `fitted.eqx`, `params.csv`
    (with each per-field parameter's field), `fit.csv` (observed and fitted inventors, tidy),
    `effects.csv` (each community's latent attraction), `history.csv`, `loss.png`, `fit.png`
    (inventors per field over the periods), `communities.png` (by field and state, last period),
    with an evaluation `evaluation.csv` and `evaluation.png`; then `report.md` and `summary.json`."""
    save_panel_calibration(calibration, out.staging)
    table = parameter_table(calibration.laplace, data.domains)
    table = pd.concat([table, calibration.noise.assign(domain="")[list(table.columns)]], ignore_index=True)
    table.to_csv(out.path("params.csv"), index=False)
    observed, fitted = data.observed_inventors(), fitted_inventors(calibration.estimate, data)
    periods = np.asarray(data.periods[1:])
    num_periods, num_states, num_fields = observed.shape
    pd.DataFrame({
        "period_start": np.repeat(periods, num_states * num_fields),
        "state": np.tile(np.repeat(data.codes, num_fields), num_periods),
        "field": np.tile(data.domains, num_periods * num_states),
        "observed": observed.ravel(), "fitted": fitted.ravel(),
    }).to_csv(out.path("fit.csv"), index=False)
    z = np.asarray(calibration.estimate.effects.attraction)
    scale = float(calibration.params.natural().attraction_scale)
    pd.DataFrame({"state": np.repeat(data.codes, num_fields), "field": np.tile(data.domains, num_states),
                  "attraction_z": z.ravel(), "attraction": scale * z.ravel()}).to_csv(out.path("effects.csv"), index=False)
    restarts = calibration.restarts
    history_table(restarts.history).to_csv(out.path("history.csv"), index=False)
    figures.plot_loss_history(restarts.history, out.path("loss.png"), final=calibration.result.best_loss)
    figures.plot_field_paths(periods, observed, fitted, data.domains, out.path("fit.png"))
    figures.plot_communities(observed[-1], fitted[-1], data.codes, data.domains, out.path("communities.png"),
                             period=str(periods[-1]))
    seen = np.isfinite(observed).reshape(num_periods, -1).any(axis=0)  # communities observed at least once
    flat_observed, flat_fitted = observed.reshape(num_periods, -1)[:, seen], fitted.reshape(num_periods, -1)[:, seen]
    dispersion = float(calibration.estimate.noise.natural()["inventors_dispersion"])
    summary = dict(
        regions=data.num_regions, domains=list(data.domains), periods=list(data.periods),
        observations=int(data.num_observations), loss_per_observation=calibration.result.best_loss,
        restart_losses=restarts.best_losses.tolist(), steps=restarts.steps,
        polish_steps=calibration.polished.steps if calibration.polished else 0,
        laplace_positive_definite=calibration.laplace.positive_definite,
        fit=fit_summary(flat_observed, flat_fitted, dispersion),
        male_by_period={int(p): float(np.nanmean(np.abs(np.log1p(f) - np.log1p(o)))) for p, o, f in
                        zip(periods, flat_observed, flat_fitted)},
        notes=list(data.notes),
    )
    if evaluation is not None:
        evaluation.to_csv(out.path("evaluation.csv"), index=False)
        figures.plot_evaluation(evaluation, out.path("evaluation.png"))
        summary["evaluation"] = evaluation.to_dict(orient="records")
    summary["seconds"], summary["config"] = seconds, plain
    out.path("report.md").write_text(panel_report(summary, table))
    out.finish(summary)
    return summary


def write_posterior(out: RunOutputs, data: Dataset, calibration: Calibration, posterior: Posterior, summary: dict) -> None:
    """`posterior.nc` (ArviZ), `posterior_draws.npy` (the flat draws `diffcomm forecast` reads),
    `diagnostics.csv`, `laplace_vs_nuts.csv`, `trace.png`, `rank.png`, `pair.png`; the sampler's
    figures and the worst diagnostics into `summary`."""
    idata = inference.inference_data(posterior, data)
    idata.to_netcdf(str(out.path("posterior.nc")))
    np.save(out.path(POSTERIOR_DRAWS), posterior.draws.reshape(-1, posterior.draws.shape[-1]))  # what forecasts read
    table = inference.diagnostics_table(idata)
    table.to_csv(out.path("diagnostics.csv"), index=False)
    compared = inference.laplace_against_nuts(calibration, table)
    compared.to_csv(out.path("laplace_vs_nuts.csv"), index=False)
    inference.plot_diagnostics(idata, out.staging)
    weights = table[table.parameter.isin(inference.DRIVER_WEIGHTS)]
    summary["posterior"] = dict(
        chains=int(posterior.draws.shape[0]), draws=int(posterior.draws.shape[1]), seconds=posterior.seconds,
        divergent=int(posterior.divergent.sum()), warmup_divergent=posterior.warmup_divergent,
        step_size=posterior.step_size.tolist(), mean_leapfrogs=float(posterior.leapfrogs.mean()),
        mean_acceptance=float(posterior.acceptance.mean()),
        curvature=posterior.curvature[:8].tolist(), max_rhat=float(table.rhat.max()), min_ess_bulk=float(table.ess_bulk.min()),
        driver_weights=weights.to_dict(orient="records"), laplace_vs_nuts=compared.to_dict(orient="records"))


def write_evaluation(out: RunOutputs, config: CalibrateConfig, data: Dataset, evaluation: Evaluation, summary: dict) -> None:
    """`evaluation.csv` (one row per origin and method), `evaluation.png`, and `rolling_origin.png`
    (the last origin's forecast against the observations); the table and the wins into `summary`."""
    evaluation.table.to_csv(out.path("evaluation.csv"), index=False)
    figures.plot_evaluation(evaluation.table, out.path("evaluation.png"))
    origin = max(evaluation.bands)
    band, o = evaluation.bands[origin], origin - data.years[0]
    observed, years = data.observed_patents(), np.asarray(data.years[1:])
    shown = len(band["mean"])
    figures.plot_observed_vs_model(
        years[:shown], observed[:shown], band["mean"], band["lower"], band["upper"], data.names,
        out.path("rolling_origin.png"), level=0.9, largest=config.evaluation.largest_regions, origin_year=origin,
        total=(band["total_lower"], band["total_upper"]),
        extra={name: np.vstack([np.full((o, mean.shape[1]), np.nan), mean])
               for name, mean in evaluation.forecasts[origin].items() if name != MODEL},
        title=f"Rolling origin: fit through {origin}, forecast {origin + 1}-{data.years[0] + shown}")
    summary["evaluation"] = dict(table=evaluation.table.to_dict(orient="records"),
                                 wins=evaluation.wins().to_dict(orient="records"))


def write_forecast(out: RunOutputs, forecast: Forecast, *, level: float, run: str, config: dict,
                   draws_from: str = "Laplace approximation") -> dict:
    """`forecast.csv` (`region,year,mean,lower,upper`), `forecast.png` and `summary.json`."""
    frame = forecast.table()
    frame.to_csv(out.path("forecast.csv"), index=False)
    figures.plot_observed_vs_model(
        forecast.years, forecast.observed, forecast.mean, forecast.lower, forecast.upper, forecast.names,
        out.path("forecast.png"), level=level, origin_year=forecast.origin_year, total=forecast.total,
        title=f"Forecast {forecast.first_year}-{forecast.years[-1]} from the counts of {forecast.origin_year}",
    )
    years = np.asarray(forecast.years)
    wanted = years >= forecast.first_year
    lower, upper = (np.asarray(bound)[wanted] for bound in forecast.total)  # of the sum over regions
    future = years[wanted]
    summary = dict(run=run, years=[forecast.first_year, int(forecast.years[-1])], rows=len(frame),
                   regions=len(forecast.codes), origin_year=forecast.origin_year, parameter_draws=draws_from,
                   total=[dict(year=int(y), lower=float(lo), upper=float(hi)) for y, lo, hi in zip(future, lower, upper)],
                   config=config)
    if forecast.level is not None:  # how the regions' filtered level moves on (`filtering.py`)
        summary["level"] = dict(passthrough=forecast.level.passthrough, step=forecast.level.tau, dispersion=forecast.level.kappa)
    if forecast.count_dispersion is not None:  # per year after the origin, from the forecast's own past errors
        summary["count_dispersion"] = [float(r) for r in forecast.count_dispersion]
    out.finish(summary)
    return summary


def _allocation_table(problem: PolicyProblem, names: tuple[str, ...], spend: np.ndarray) -> pd.DataFrame:
    """`region, lever, year, spend, amount`: one row per cell and year."""
    per_year = np.asarray(spend_per_year(problem, jnp.asarray(spend)))
    t, r, k = np.meshgrid(np.arange(problem.years), np.arange(problem.num_regions), np.arange(len(problem.levers)), indexing="ij")
    return pd.DataFrame({
        "region": np.asarray(names)[r.ravel()], "lever": np.asarray(problem.levers)[k.ravel()], "year": t.ravel() + 1,
        "spend": per_year.ravel(), "amount": (per_year / np.asarray(problem.costs)).ravel(),
    })


def write_policy(out: RunOutputs, problem: PolicyProblem, names: tuple[str, ...], result: PolicyResult,
                 methods: dict[str, tuple[np.ndarray, int]], *, seconds: float, config: dict,
                 robust: Robust | None = None) -> dict:
    """`comparison.csv`, `objective_parts.csv`, `allocation.csv`, `marginal_value.csv`,
    `allocation.png`, `objective.png`, `report.md` and `summary.json`; with a `robust` policy
    also `allocation_robust.csv`, `robustness.csv` (`comparison.ROBUSTNESS_COLUMNS`) and `robustness.png`."""
    rows, parts = [], {}
    for method, (spend, evaluations) in methods.items():
        value, method_parts = evaluate(problem, np.asarray(spend))
        rows.append((method, float(value), evaluations))
        parts[method] = {k: float(v) for k, v in method_parts.items()}
    parts["no_policy"] = {k: float(v) for k, v in evaluate(problem, np.zeros(problem.shape))[1].items()}
    comparison = pd.DataFrame(rows, columns=["method", "objective", "simulator_evaluations"])
    comparison.to_csv(out.path("comparison.csv"), index=False)
    pd.DataFrame(parts).rename_axis("part").to_csv(out.path("objective_parts.csv"))

    spend = result.spend
    _allocation_table(problem, names, spend).to_csv(out.path("allocation.csv"), index=False)
    marginal = np.asarray(marginal_values(problem, spend))
    marginal = pd.DataFrame(marginal, index=pd.Index(names, name="region"), columns=list(problem.levers))
    marginal.to_csv(out.path("marginal_value.csv"))
    figures.plot_allocation(spend.sum(0), names, problem.levers, out.path("allocation.png"))
    figures.plot_policy_history(result.history, {m: v for m, v, _ in rows if m != "gradient"}, out.path("objective.png"))
    summary = dict(
        regions=problem.num_regions, years=problem.years, levers=list(problem.levers), budget=problem.budget,
        spent=float(spend.sum()), smallest_cell=float(spend.min()), objective_weights=dict(problem.weights),
        comparison=comparison.to_dict(orient="records"), parts=parts,
        spend_by_lever=dict(zip(problem.levers, spend.sum((0, 1)).tolist())),
        gradient_seconds=result.seconds, seconds=seconds, config=config,
    )
    if robust is not None:
        other = robust.result.spend
        _allocation_table(problem, names, other).to_csv(out.path("allocation_robust.csv"), index=False)
        pd.DataFrame(robust.table, columns=list(ROBUSTNESS_COLUMNS)).to_csv(out.path("robustness.csv"), index=False)
        figures.plot_robustness(robust.values, out.path("robustness.png"))
        summary["uncertainty"] = dict(
            draws_from=robust.draws_from, draws=robust.draws, holdout_draws=len(robust.values["no_policy"]),
            table=robust.table, budget_moved=float(0.5 * np.abs(other - spend).sum() / problem.budget),
            spend_by_lever_robust=dict(zip(problem.levers, other.sum((0, 1)).tolist())), robust_seconds=robust.result.seconds)
    (out.path("report.md")).write_text(policy_report(summary))
    out.finish(summary)
    return summary
