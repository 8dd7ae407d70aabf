"""The work behind each command: typed config in, files in the run folder out.

`cli.py` turns Hydra's config into the typed configs of `config.py` and calls these; nothing
here reads a `DictConfig`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
import pandas as pd

from .config import CalibrateConfig, ConfigError, DataConfig, ForecastConfig, SimulateConfig, build_params, parse_years


def _precision(model_cfg) -> None:
    if model_cfg.x64:
        jax.config.update("jax_enable_x64", True)


# --------------------------------------------------------------------------------------------
# simulate
# --------------------------------------------------------------------------------------------


def run_simulate(cfg: SimulateConfig, out_dir: Path, *, plain_config: dict | None = None) -> dict:
    """Simulate the configured scenario and write its outputs into `out_dir`."""
    _precision(cfg.model)
    from .config import build_forcing, build_scenario
    from .report import write_simulation
    from .simulate import simulate

    params = build_params(cfg.model)
    scenario = build_scenario(params, cfg.scenario)
    forcing = build_forcing(cfg.scenario, scenario)
    start = time.perf_counter()
    _, traj = simulate(params, scenario.initial, scenario.drivers, scenario.graph, forcing)
    jax.block_until_ready(traj)
    seconds = time.perf_counter() - start
    summary = write_simulation(
        out_dir, scenario, traj, config=plain_config or {}, seconds=seconds, csv=cfg.output.csv, figures=cfg.output.figures
    )
    print(f"simulated {scenario.num_regions} regions x {cfg.scenario.years} years ({seconds:.2f} s with compilation) -> {out_dir}")
    return summary


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def load_dataset(data: DataConfig, *, last_year: int | None = None):
    """The calibration data set described by `data` (optionally cut at `last_year`)."""
    from . import data as D

    notes: list[str] = []
    panel = D.load_patents(data.patents)
    covariates = D.load_covariates(data.covariates, on_duplicate=data.covariate_duplicates, notes=notes)
    specialization = D.load_specialization(data.clusters) if data.clusters else pd.Series(dtype=float)
    linkage = D.load_linkage_counts(data.linkages, period=data.linkage_period) if data.linkages else None
    edges = None
    if data.edges:
        known = set(panel.codes) | set(covariates.index) | (set(linkage.index) if linkage is not None else set())
        edges = D.load_edges(data.edges, known_codes=known, period=data.edge_period)
    regions = list(data.regions)
    if regions:
        unknown = sorted(set(regions) - set(panel.codes))
        if unknown:
            raise D.DataError(f"{D.resolve(data.patents)}: unknown region code(s) {unknown[:5]} in data.regions")
        keep = np.isin(panel.codes, regions)
        panel = D.PatentPanel(tuple(np.asarray(panel.codes)[keep]), tuple(np.asarray(panel.names)[keep]),
                              panel.years, panel.counts[:, keep])
    mapping = D.DriverMapping(
        terms={k: [D.DriverTerm(**dataclasses.asdict(t)) for t in v] for k, v in data.drivers.items()}
    )
    return D.build_dataset(
        panel, covariates, specialization, linkage, edges, mapping,
        first_year=data.first_year, last_year=last_year or data.last_year,
        min_edge_weight=data.min_edge_weight, notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------
# calibrate
# --------------------------------------------------------------------------------------------


def _fit_settings(cfg: CalibrateConfig, **changes):
    from .calibrate import FitSettings

    f = cfg.fit
    settings = FitSettings(
        free=list(f.free), restarts=f.restarts, steps=f.steps, spread=f.spread, patience=f.patience,
        tolerance=f.tolerance, checkpoint_every=f.checkpoint_every, line_search=cfg.optimizer.line_search,
        seed=f.seed, stop_after=f.stop_after,
    )
    return dataclasses.replace(settings, **changes)


def fit_dataset(cfg: CalibrateConfig, dataset, *, checkpoint: Path | None, label: str = "calibrate"):
    """Fit the free parameters to `dataset`: batched Adam restarts, an L-BFGS polish, Laplace.

    **Returns:** `(adam_result, final_result, laplace_approximation, inputs)`; the final result is
    the polished one when the polish improved on Adam's best restart.
    """
    import optax
    from hydra.utils import instantiate

    from .calibrate import fit, free_filter, laplace
    from .loss import CalibrationInputs, calibration_loss, gaussian_prior

    inputs = CalibrationInputs.from_dataset(dataset)
    start = build_params(cfg.model)
    spec = free_filter(start, cfg.fit.free)
    scale = cfg.fit.prior_scale

    def total(params):
        nll = calibration_loss(params, inputs)
        return nll if scale is None else nll + gaussian_prior(params, start, spec, scale)

    per_observation = float(inputs.num_observations)

    def loss(params):
        return total(params) / per_observation

    try:
        optimizer = instantiate(cfg.optimizer.transform)
    except Exception as error:  # Hydra wraps whatever the target raised
        message = str(error).strip().splitlines()
        raise ConfigError(f"optimizer.transform: {message[-1] if message else type(error).__name__}") from None
    result = fit(loss, start, optimizer, _fit_settings(cfg), checkpoint_path=checkpoint, progress=cfg.fit.progress)
    polished = result
    if cfg.fit.polish_steps:
        polished = fit(
            loss, result.params, optax.lbfgs(),
            _fit_settings(cfg, restarts=1, steps=cfg.fit.polish_steps, spread=0.0, line_search=True, patience=20,
                          tolerance=1e-10, stop_after=None),
            checkpoint_path=None if checkpoint is None else checkpoint.with_name(checkpoint.name + "_polish"),
            progress=cfg.fit.progress,
        )
        if polished.best_losses[0] > result.best_losses[result.best_restart]:
            polished = result  # the polish never makes things worse
    approx = laplace(total, polished.params, cfg.fit.free)
    return result, polished, approx, inputs


def _claim_run_folder(cfg, out_dir: Path, settings: str) -> None:
    """Mark `out_dir` with the configuration's fingerprint; refuse a folder holding another's.

    A checkpoint in the folder is resumed, so it must come from the same configuration; the
    settings that only steer one call (`stop_after`, `progress`) do not count.
    """
    plain = dataclasses.asdict(cfg)
    for key in ("stop_after", "progress"):
        plain[settings].pop(key, None)
    fingerprint = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stamp = out_dir / "fingerprint.txt"
    if stamp.exists() and stamp.read_text().strip() != fingerprint:
        raise ConfigError(f"{out_dir} holds a checkpoint of a different configuration; use a new run folder")
    stamp.write_text(fingerprint + "\n")


def run_calibrate(cfg: CalibrateConfig, out_dir: Path, *, plain_config: dict | None = None) -> dict:
    """Calibrate, evaluate and report into `out_dir`; a checkpoint there is resumed."""
    _precision(cfg.model)
    from .calibrate import Interrupted
    from .forecast import forecast_patents
    from .model import Params
    from .report import fit_summary, parameter_table, plot_loss_history, plot_observed_vs_fitted, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim_run_folder(cfg, out_dir, "fit")
    started = time.perf_counter()
    dataset = load_dataset(cfg.data)
    print(f"data: {dataset.num_regions} regions, years {dataset.years[0]}-{dataset.years[-1]} "
          f"({time.perf_counter() - started:.1f} s to load)")
    try:
        adam, result, approx, inputs = fit_dataset(cfg, dataset, checkpoint=out_dir / "checkpoint")
    except Interrupted as stop:
        raise SystemExit(_interrupted(stop, out_dir))
    params = result.params
    eqx.tree_serialise_leaves(out_dir / "fitted.eqx", params)
    np.savez(out_dir / "laplace.npz", names=np.asarray(approx.names), mean=approx.mean, covariance=approx.covariance,
             natural=approx.natural, natural_se=approx.natural_se, positive_definite=approx.positive_definite)
    docs = {name: meta["doc"] for name, meta in Params.describe().items()}
    table = parameter_table(approx.names, approx.natural, approx.natural_se, docs)
    table.to_csv(out_dir / "params.csv", index=False)
    history = pd.DataFrame(
        [(s + 1, r, loss, grad) for s, (losses, grads) in enumerate(zip(adam.history["loss"], adam.history["grad_norm"]))
         for r, (loss, grad) in enumerate(zip(losses, grads))],
        columns=["step", "restart", "loss", "grad_norm"],
    )
    history.to_csv(out_dir / "history.csv", index=False)
    plot_loss_history(adam.history, out_dir / "loss.png")

    years = dataset.years[1:]
    observed = np.where(np.asarray(inputs.patents_mask) > 0, np.asarray(inputs.patents), np.nan)
    band = forecast_patents(params, approx, cfg.fit.free, inputs, len(years), key=jax.random.key(cfg.fit.seed),
                            draws=cfg.evaluation.draws, level=cfg.evaluation.level)
    plot_observed_vs_fitted(years, observed, band["fitted"], band["lower"], band["upper"], dataset.names,
                            out_dir / "fit.png", largest=cfg.evaluation.largest_regions)
    dispersion = float(params.natural().patents_dispersion)
    summary = dict(
        regions=dataset.num_regions, years=[int(dataset.years[0]), int(dataset.years[-1])],
        observations=int(inputs.num_observations), fit=fit_summary(observed, band["fitted"], dispersion),
        loss_per_observation=float(result.best_losses[result.best_restart]),
        restart_losses=adam.best_losses.tolist(), steps=adam.steps, converged=adam.converged,
        polish_steps=result.steps if result is not adam else 0,
        laplace_positive_definite=approx.positive_definite, notes=list(dataset.notes),
    )
    if cfg.evaluation.rolling_origin:
        try:
            summary["rolling_origin"] = rolling_origin(cfg, dataset, out_dir)
        except Interrupted as stop:
            raise SystemExit(_interrupted(stop, out_dir))
    summary["seconds"] = time.perf_counter() - started
    summary["config"] = plain_config or {}
    (out_dir / "report.md").write_text(calibration_report(summary, table))
    write_json(out_dir / "summary.json", summary)
    print(f"calibrated in {summary['seconds']:.0f} s; loss per observation {summary['loss_per_observation']:.4f}; "
          f"deviance explained {summary['fit']['deviance_explained_vs_constant']:.3f} -> {out_dir}")
    return summary


def _interrupted(stop, out_dir: Path, command: str = "calibrate") -> int:
    import sys

    print(f"diffcomm {command}: interrupted at step {stop.step}; the checkpoint is in {out_dir}. "
          f"Run the same command with hydra.run.dir={out_dir} to resume.", file=sys.stderr)
    return 3


def rolling_origin(cfg: CalibrateConfig, dataset, out_dir: Path) -> dict:
    """Fit through `train_last_year`, forecast the remaining years; score against baselines."""
    from .forecast import forecast_patents, log_linear_trend, per_region_log_error, persistence, scores
    from .report import plot_observed_vs_fitted

    train_last = cfg.evaluation.train_last_year
    train = load_dataset(cfg.data, last_year=train_last)
    _, result, approx, inputs = fit_dataset(cfg, train, checkpoint=out_dir / "checkpoint_rolling")
    horizon = int(dataset.years[-1] - train_last)
    total_years = int(dataset.years[-1] - dataset.years[0])
    full = np.where(np.asarray(dataset.observed.patents_mask) > 0, np.asarray(dataset.observed.patents), np.nan)
    truth = full[-horizon:]
    origin = total_years - horizon  # years after the first: the last training year
    band = forecast_patents(result.params, approx, cfg.fit.free, inputs, total_years, key=jax.random.key(cfg.fit.seed + 1),
                            draws=cfg.evaluation.draws, level=cfg.evaluation.level,
                            origin=origin, origin_counts=full[origin - 1])
    history = np.vstack([dataset.first_patents[None], full[:-horizon]])
    predictions = {
        "model": band["mean"][-horizon:],
        "persistence": persistence(history, horizon),
        "log_linear_trend": log_linear_trend(history, horizon),
    }
    table = {name: scores(pred, truth) for name, pred in predictions.items()}
    inside = (truth >= band["lower"][-horizon:]) & (truth <= band["upper"][-horizon:])
    coverage = float(np.nanmean(np.where(np.isnan(truth), np.nan, inside)))
    years = dataset.years[-horizon:]
    rows = []
    for t, year in enumerate(years):
        for r, code in enumerate(dataset.codes):
            rows.append((code, dataset.names[r], int(year), truth[t, r], predictions["model"][t, r],
                         band["lower"][-horizon:][t, r], band["upper"][-horizon:][t, r],
                         predictions["persistence"][t, r], predictions["log_linear_trend"][t, r]))
    pd.DataFrame(rows, columns=["region", "name", "year", "observed", "model", "lower", "upper", "persistence",
                                "log_linear_trend"]).to_csv(out_dir / "rolling_origin.csv", index=False)
    errors = {name: per_region_log_error(pred, truth) for name, pred in predictions.items()}
    best_baseline = np.minimum(errors["persistence"], errors["log_linear_trend"])
    excess = errors["model"] - best_baseline
    worst = np.argsort(-np.nan_to_num(excess, nan=-np.inf))[:10]
    size = np.nanmean(truth, axis=0)
    share_worse = float(np.nanmean(excess > 0))
    plot_observed_vs_fitted(
        dataset.years[1:], full, band["mean"], band["lower"], band["upper"], dataset.names, out_dir / "rolling_origin.png",
        largest=cfg.evaluation.largest_regions,
        extra={"persistence": (years, predictions["persistence"]), "log-linear trend": (years, predictions["log_linear_trend"])},
    )
    return dict(
        train_years=[int(dataset.years[0]), train_last], test_years=[int(years[0]), int(years[-1])],
        scores=table, interval_coverage=coverage,
        share_of_regions_where_model_is_worse_than_best_baseline=share_worse,
        worse_regions=[dict(region=dataset.codes[i], name=dataset.names[i], excess_log_error=float(excess[i]),
                            mean_patents=float(size[i])) for i in worst],
        mean_patents_where_model_worse=float(np.nanmedian(size[excess > 0])) if (excess > 0).any() else None,
        mean_patents_where_model_better=float(np.nanmedian(size[excess <= 0])) if (excess <= 0).any() else None,
    )


def calibration_report(summary: dict, table: pd.DataFrame) -> str:
    """A readable account of a calibration: parameters, fit, and the rolling-origin test."""
    fit = summary["fit"]
    lines = [
        "# Calibration report", "",
        f"{summary['regions']} regions, years {summary['years'][0]}-{summary['years'][1]}, "
        f"{summary['observations']} observations; loss per observation {summary['loss_per_observation']:.4f}.",
        f"Restarts reached {', '.join(f'{x:.4f}' for x in summary['restart_losses'])} "
        f"({summary['steps']} steps, converged: {summary['converged']}); L-BFGS polish: {summary['polish_steps']} steps.",
        f"Laplace approximation positive definite: {summary['laplace_positive_definite']}.", "",
        "## Fitted parameters (natural scale, standard errors from the Laplace approximation)", "",
        "| parameter | value | se | 95% interval | meaning |", "|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        lines.append(f"| {row.parameter} | {row.value:.4g} | {row.se:.3g} | [{row.lower95:.3g}, {row.upper95:.3g}] | {row.meaning} |")
    lines += [
        "", "## Fit", "",
        f"- deviance explained vs. one constant mean: {fit['deviance_explained_vs_constant']:.4f}",
        f"- deviance explained vs. each region's own mean: {fit['deviance_explained_vs_region_mean']:.4f}",
        "- per-region mean absolute log error, quantiles 10/50/90%: "
        + ", ".join(f"{v:.3f}" for v in fit["region_abs_log_error_quantiles"].values()),
    ]
    if "rolling_origin" in summary:
        ro = summary["rolling_origin"]
        lines += ["", f"## Rolling origin: fit {ro['train_years'][0]}-{ro['train_years'][1]}, forecast "
                      f"{ro['test_years'][0]}-{ro['test_years'][1]}", "",
                  "| method | MAE | mean abs log error | RMSE |", "|---|---|---|---|"]
        for name, s in ro["scores"].items():
            lines.append(f"| {name} | {s['mae']:.2f} | {s['male']:.4f} | {s['rmse']:.2f} |")
        lines += ["", f"- coverage of the {int(100 * 0.9)}% interval: {ro['interval_coverage']:.3f}",
                  f"- share of regions where the model does worse than the better baseline: "
                  f"{ro['share_of_regions_where_model_is_worse_than_best_baseline']:.3f}",
                  "- regions where it does worst (excess mean absolute log error): "
                  + "; ".join(f"{w['name']} (+{w['excess_log_error']:.2f})" for w in ro["worse_regions"][:5])]
    lines += ["", "## Data notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# forecast
# --------------------------------------------------------------------------------------------


def load_calibrated_run(run: Path):
    """The typed config, data set, fitted parameters and Laplace approximation of a run folder."""
    from omegaconf import OmegaConf

    from .calibrate import Laplace, free_filter
    from .config import to_typed

    run = Path(run)
    needed = [run / ".hydra" / "config.yaml", run / "fitted.eqx", run / "laplace.npz"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise ConfigError(f"run={run} is not a finished calibration: missing {', '.join(missing)}")
    cfg = to_typed(OmegaConf.load(needed[0]), CalibrateConfig)
    _precision(cfg.model)
    start = build_params(cfg.model)
    params = eqx.tree_deserialise_leaves(needed[1], start)
    stored = np.load(needed[2])
    free_part, _ = eqx.partition(params, free_filter(params, cfg.fit.free))
    _, unravel = ravel_pytree(free_part)
    approx = Laplace(list(stored["names"]), stored["mean"], stored["covariance"], stored["natural"],
                     stored["natural_se"], bool(stored["positive_definite"]), unravel)
    return cfg, params, approx


def run_forecast(cfg: ForecastConfig, out_dir: Path, *, plain_config: dict | None = None) -> pd.DataFrame:
    """Forecast patents for the years asked from a calibrated run; writes `forecast.csv`.

    The forecast conditions on the last observed year before the first year asked (knowledge
    restarts from its counts); earlier years of the simulation are the fit.
    """
    from .forecast import forecast_patents
    from .loss import CalibrationInputs
    from .report import atomic_path, plot_observed_vs_fitted, write_json

    first, last = parse_years(cfg.years)
    calibrated, params, approx = load_calibrated_run(Path(cfg.run))
    dataset = load_dataset(calibrated.data)
    start_year = int(dataset.years[0])
    if first <= start_year:
        raise ConfigError(f"years must start after the data's first year {start_year}, got {cfg.years}")
    inputs = CalibrationInputs.from_dataset(dataset)
    num_years = last - start_year
    observed = np.where(np.asarray(inputs.patents_mask) > 0, np.asarray(inputs.patents), np.nan)
    # condition on the last observed year before the forecast (years after the first year)
    origin = min(int(dataset.years[-1]), first - 1) - start_year
    band = forecast_patents(params, approx, calibrated.fit.free, inputs, num_years, key=jax.random.key(cfg.seed),
                            draws=cfg.draws, level=cfg.level, origin=origin if origin >= 1 else None,
                            origin_counts=observed[origin - 1] if origin >= 1 else None)
    years = np.arange(start_year + 1, last + 1)
    wanted = years >= first
    frame = pd.DataFrame(
        {
            "region": np.repeat(np.asarray(dataset.codes)[None], wanted.sum(), axis=0).ravel(),
            "year": np.repeat(years[wanted], dataset.num_regions),
            "mean": band["mean"][wanted].ravel(),
            "lower": band["lower"][wanted].ravel(),
            "upper": band["upper"][wanted].ravel(),
        }
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "forecast.csv") as tmp:
        frame.to_csv(tmp, index=False)
    shown = np.full((len(years), dataset.num_regions), np.nan)
    shown[: len(observed)] = observed
    plot_observed_vs_fitted(years, shown, band["mean"], band["lower"], band["upper"], dataset.names,
                            out_dir / "forecast.png")
    write_json(out_dir / "summary.json", dict(run=str(cfg.run), years=[first, last], rows=len(frame),
                                              regions=dataset.num_regions, origin_year=start_year + origin,
                                              parameter_uncertainty=approx.positive_definite, config=plain_config or {}))
    print(f"forecast {first}-{last} for {dataset.num_regions} regions -> {out_dir / 'forecast.csv'}")
    return frame


# --------------------------------------------------------------------------------------------
# optimize
# --------------------------------------------------------------------------------------------


def build_policy_problem(cfg):
    """The policy problem of an optimize config: from synthetic regions or a calibrated run.

    **Returns:** `(problem, region_names, region_size)`; size is initial active members.
    """
    from .policy import PolicyProblem

    p = cfg.policy
    if cfg.source == "run":
        from .forecast import state_at_origin
        from .loss import CalibrationInputs

        calibrated, params, _ = load_calibrated_run(Path(cfg.run))
        dataset = load_dataset(calibrated.data)
        inputs = CalibrationInputs.from_dataset(dataset)
        # the state in the last data year: simulate the data years, knowledge from the last counts
        last = np.where(np.asarray(inputs.patents_mask[-1]) > 0, np.asarray(inputs.patents[-1]), np.nan)
        initial, _ = state_at_origin(params, inputs, len(dataset.years) - 1, jnp.asarray(last))
        drivers, graph, names = inputs.drivers, inputs.graph, dataset.names
    else:
        from .config import build_scenario

        params = build_params(cfg.model)
        scenario = build_scenario(params, cfg.scenario)
        initial, drivers, graph, names = scenario.initial, scenario.drivers, scenario.graph, scenario.region_names
    problem = PolicyProblem(
        params, initial, drivers, graph, years=p.years, levers=tuple(p.levers),
        costs=np.asarray([p.costs.get(name, 1.0) for name in p.levers], float), budget=p.budget, cap=p.cap,
        region_cap=p.region_cap,
        time_varying=p.time_varying, discount=p.discount, weights=dict(p.objective),
    )
    size = np.asarray(initial.regions.active).sum(-1)
    return problem, tuple(names), size


def run_optimize(cfg, out_dir: Path, *, plain_config: dict | None = None) -> dict:
    """Optimize the allocation, run the baselines, and report into `out_dir`."""
    _precision(cfg.model)
    from .calibrate import Interrupted
    from .policy import evaluate, evolution_strategy, make_objective, marginal_values, optimize, proportional_allocation
    from .policy import random_search, uniform_allocation
    from .report import plot_allocation, plot_policy_history, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim_run_folder(cfg, out_dir, "optimize")
    started = time.perf_counter()
    try:
        problem, names, size = build_policy_problem(cfg)
    except ValueError as error:
        raise ConfigError(f"policy: {error}") from None
    o = cfg.optimize
    try:
        result = optimize(problem, steps=o.steps, learning_rate=o.learning_rate, checkpoint_path=out_dir / "checkpoint",
                          checkpoint_every=o.checkpoint_every, stop_after=o.stop_after, progress=o.progress)
    except Interrupted as stop:
        raise SystemExit(_interrupted(stop, out_dir, "optimize"))
    methods = {"gradient": (result.spend, result.evaluations)}
    if o.baselines:
        methods["uniform"] = (np.asarray(uniform_allocation(problem)), 1)
        methods["proportional_to_size"] = (np.asarray(proportional_allocation(problem, size)), 1)
        rs = random_search(problem, result.evaluations, key=jax.random.key(o.seed))
        methods["random_search"] = (rs.spend, rs.evaluations)
        es = evolution_strategy(problem, result.evaluations, key=jax.random.key(o.seed + 1))
        methods["evolution_strategy"] = (es.spend, es.evaluations)
    rows, parts = [], {}
    objective, _ = make_objective(problem)
    for method, (spend, evaluations) in methods.items():
        value, method_parts = evaluate(problem, spend, objective)
        rows.append((method, value, evaluations))
        parts[method] = method_parts
    _, parts["no_policy"] = evaluate(problem, np.zeros(problem.shape), objective)
    comparison = pd.DataFrame(rows, columns=["method", "objective", "simulator_evaluations"])
    comparison.to_csv(out_dir / "comparison.csv", index=False)
    pd.DataFrame(parts).rename_axis("part").to_csv(out_dir / "objective_parts.csv")

    spend = result.spend
    per_year = spend if problem.time_varying else np.broadcast_to(spend / problem.years, (problem.years, *spend.shape[1:]))
    t, r, l = np.meshgrid(np.arange(problem.years), np.arange(problem.num_regions), np.arange(len(problem.levers)), indexing="ij")
    pd.DataFrame({
        "region": np.asarray(names)[r.ravel()], "lever": np.asarray(problem.levers)[l.ravel()], "year": t.ravel() + 1,
        "spend": per_year.ravel(), "amount": (per_year / problem.costs).ravel(),
    }).to_csv(out_dir / "allocation.csv", index=False)
    marginal = marginal_values(problem, jnp.asarray(spend))
    pd.DataFrame(marginal, index=pd.Index(names, name="region"), columns=list(problem.levers)).to_csv(out_dir / "marginal_value.csv")
    plot_allocation(spend.sum(0), names, problem.levers, out_dir / "allocation.png")
    plot_policy_history(result.history, {m: v for m, v, _ in rows if m != "gradient"}, out_dir / "objective.png")
    summary = dict(
        regions=problem.num_regions, years=problem.years, levers=list(problem.levers), budget=problem.budget,
        spent=float(spend.sum()), smallest_cell=float(spend.min()), objective_weights=problem.weights,
        comparison=comparison.to_dict(orient="records"), parts=parts,
        spend_by_lever=dict(zip(problem.levers, spend.sum((0, 1)).tolist())),
        gradient_seconds=result.seconds, seconds=time.perf_counter() - started, config=plain_config or {},
    )
    (out_dir / "report.md").write_text(policy_report(summary))
    write_json(out_dir / "summary.json", summary)
    best_baseline = max((v for m, v, _ in rows if m != "gradient"), default=float("nan"))
    print(f"optimized in {result.seconds:.0f} s: objective {result.objective:.6g} "
          f"(best baseline {best_baseline:.6g}) -> {out_dir}")
    return summary


def policy_report(summary: dict) -> str:
    lines = ["# Policy optimization", "",
             f"{summary['regions']} regions, {summary['years']} years, budget {summary['budget']:g} "
             f"(spent {summary['spent']:.6g}; smallest cell {summary['smallest_cell']:.3g}).",
             f"Objective weights: {summary['objective_weights']}.", "",
             "| method | objective | simulator evaluations |", "|---|---|---|"]
    for row in summary["comparison"]:
        lines.append(f"| {row['method']} | {row['objective']:.6f} | {row['simulator_evaluations']} |")
    lines += ["", "Objective parts (raw) with no policy, and under each method:", "",
              "| part | " + " | ".join(summary["parts"]) + " |", "|---|" + "---|" * len(summary["parts"])]
    for part in next(iter(summary["parts"].values())):
        lines.append(f"| {part} | " + " | ".join(f"{summary['parts'][m][part]:.6g}" for m in summary["parts"]) + " |")
    lines += ["", "Spending by lever (gradient method): "
              + ", ".join(f"{k} {v:.3g}" for k, v in summary["spend_by_lever"].items()) + ".", "",
              "A gradient step counts as one simulator evaluation (a forward simulation with its adjoint);",
              f"the gradient method took {summary['gradient_seconds']:.1f} s."]
    return "\n".join(lines) + "\n"
