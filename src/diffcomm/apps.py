"""The work behind each command: typed config in, library calls, the run folder's files out.

`cli.py` turns Hydra's config into the typed configs of `config.py` (and an optax optimizer
for calibrate) and calls these. Each function builds its inputs, calls the library, and hands
the results to `report.writers`, which writes every file of the run at once on success.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .calibrate import calibrate, load_calibration
from .calibrate_domains import calibrate_panel
from .comparison import Robust, compare_methods, held_out_comparison
from .config import CalibrateConfig, ForecastConfig, OptimizeConfig, SimulateConfig, parse_years
from .data import load_dataset
from .data.panel import load_domain_dataset
from .ensemble import ensemble_from_calibration, lever_forcings, run_ensemble, scenario_label
from .errors import ConfigError
from .evaluation import evaluate, evaluate_panel
from .files import RunOutputs
from .forecast import calibrated_regions, forecast, forecast_patents
from .laplace import draw_estimates
from .params import Params
from .policy import PolicyProblem, optimize
from .posterior import require_sampler, sample_posterior
from .report import writers
from .scenario import scenario_from_config, shock_window
from .sharding import chain_mesh, region_mesh, shard_regions
from .simulate import simulate
from .training import claim_run_folder

log = logging.getLogger("diffcomm")


def run_simulate(cfg: SimulateConfig, out_dir: Path, *, plain_config: dict) -> dict:
    """Simulate the configured scenario and write its outputs into `out_dir` (an ensemble, with
    `run`, `ensemble.draws` or `ensemble.scenarios`: `_run_ensemble`)."""
    if cfg.is_ensemble:
        return _run_ensemble(cfg, out_dir, plain_config=plain_config)
    params = Params.from_natural(cfg.model.num_domains, **cfg.model.params)
    scenario, forcing = scenario_from_config(params, cfg.scenario)
    inputs = shard_regions((scenario.initial, scenario.drivers, scenario.graph, forcing), region_mesh(cfg.runtime.devices),
                           scenario.num_regions)
    started = time.perf_counter()
    _, traj = simulate(params, *inputs)
    jax.block_until_ready(traj)
    seconds = time.perf_counter() - started
    log.info("simulated %d regions x %d years in %.2f s (compilation included)", scenario.num_regions, cfg.scenario.years,
             seconds)
    with RunOutputs(out_dir) as out:
        shock = cfg.scenario.shock
        window = (shock.start, min(shock.start + shock.duration - 1, cfg.scenario.years)) if shock.intensity > 0 else None
        summary = writers.write_simulation(out, scenario, traj, cfg.output, title=cfg.scenario.name, seconds=seconds,
                                           config=plain_config, shock=window)
    log.info("wrote %d rows of trajectories -> %s", summary["rows"], out_dir)
    return summary


def _run_ensemble(cfg: SimulateConfig, out_dir: Path, *, plain_config: dict) -> dict:
    """Every scenario of `ensemble.scenarios` (lever settings on top of `scenario.levers`, with
    `scenario.shock`) under `ensemble.draws` parameter draws of the calibrated run `run` from its
    last year on, or the synthetic regions of `scenario` under `model.params`, in one compiled
    call per chunk of draws (`ensemble.py`)."""
    settings = list(cfg.ensemble.scenarios) or [{}]
    labels = tuple(scenario_label(setting) for setting in settings)
    years, e = cfg.scenario.years, cfg.ensemble
    started = time.perf_counter()
    if cfg.run is not None:
        calibration = load_calibration(Path(cfg.run))
        data = load_dataset(calibration.config.data)
        data = shard_regions(data, region_mesh(cfg.runtime.devices), data.num_regions)
        forcings = lever_forcings(settings, cfg.scenario.levers, years, data.num_regions,
                                  jnp.asarray(np.repeat(shock_window(cfg.scenario)[:, None], data.num_regions, axis=1)))
        log.info("ensemble: %d scenarios x %d draws x %d calibrated regions x %d years", len(labels), max(e.draws, 1),
                 data.num_regions, years)
        ensemble = ensemble_from_calibration(calibration, data, forcings, scenarios=labels, draws=e.draws,
                                             key=jax.random.key(e.seed), chunk=e.chunk)
        source = ("NUTS posterior" if calibration.posterior is not None else "Laplace approximation") if e.draws else "estimate"
        title = f"{len(data.names)} calibrated regions ({cfg.run}) after {data.years[-1]}"
    else:
        params = Params.from_natural(cfg.model.num_domains, **cfg.model.params)
        scenario, forcing = scenario_from_config(params, cfg.scenario)
        forcings = lever_forcings(settings, cfg.scenario.levers, years, scenario.num_regions, forcing.shock)
        inputs = shard_regions((scenario.initial, scenario.drivers, scenario.graph, forcings), region_mesh(cfg.runtime.devices),
                               scenario.num_regions)
        log.info("ensemble: %d scenarios x %d synthetic regions x %d years", len(labels), scenario.num_regions, years)
        ensemble = run_ensemble(jax.tree_util.tree_map(lambda x: x[None], params), *inputs, scenarios=labels,
                                regions=scenario.region_names,
                                years=np.arange(1, years + 1), draws_mapped=False, chunk=e.chunk)
        source, title = "model.params", f"{scenario.num_regions} synthetic regions ({cfg.scenario.name})"
    seconds = time.perf_counter() - started
    log.info("ensemble simulated in %.1f s (compilation included)", seconds)
    with RunOutputs(out_dir) as out:
        summary = writers.write_ensemble(out, ensemble, title=title, draws_from=source, seconds=seconds, config=plain_config)
    log.info("wrote ensemble.csv, ensemble_regions.csv and ensemble.png -> %s", out_dir)
    return summary


def run_calibrate(cfg: CalibrateConfig, out_dir: Path, *, optimizer: optax.GradientTransformation | None,
                  plain_config: dict) -> dict:
    """Calibrate and report into `out_dir`; with `evaluation.rolling_origin`, first calibrate at each
    origin and score the forecasts against the baselines. Checkpoints there are resumed."""
    if cfg.data.domain_panel is not None:
        return _run_calibrate_panel(cfg, out_dir, optimizer=optimizer, plain_config=plain_config)
    if cfg.inference == "nuts":
        require_sampler()  # before anything is written or fitted
    claim_run_folder(out_dir, cfg, ignore=("fit.stop_after", "fit.progress"))
    started = time.perf_counter()
    data = load_dataset(cfg.data)
    log.info("data: %d regions, years %d-%d (%.1f s to load)", data.num_regions, data.years[0], data.years[-1],
             time.perf_counter() - started)
    data = shard_regions(data, region_mesh(cfg.runtime.devices), data.num_regions)
    evaluation = None
    if cfg.evaluation.rolling_origin:
        e = cfg.evaluation
        evaluation = evaluate(data, cfg, origins=e.origins, horizon=e.horizon, draws=e.draws, optimizer=optimizer,
                              checkpoint=out_dir / "checkpoint_origin")
    calibration = calibrate(data, cfg, optimizer=optimizer, checkpoint=out_dir / "checkpoint")
    band = forecast_patents(calibration.estimate, calibration.laplace, calibration.mask, data, len(data.years) - 1,
                            key=jax.random.key(cfg.fit.seed), draws=cfg.evaluation.draws, level=cfg.evaluation.level)
    posterior = None
    if cfg.inference == "nuts":
        posterior = sample_posterior(calibration, data, cfg.nuts, checkpoint=out_dir / "checkpoint_nuts",
                                     progress=cfg.fit.progress, mesh=chain_mesh(cfg.nuts.chains, cfg.chain_devices))
    with RunOutputs(out_dir) as out:
        summary = writers.write_calibration(out, cfg, data, calibration, band, evaluation,
                                            seconds=time.perf_counter() - started, plain=plain_config, posterior=posterior)
    log.info("calibrated in %.0f s; loss per observation %.4f; deviance explained %.3f -> %s", summary["seconds"],
             summary["loss_per_observation"], summary["fit"]["deviance_explained_vs_constant"], out_dir)
    return summary


def _run_calibrate_panel(cfg: CalibrateConfig, out_dir: Path, *, optimizer: optax.GradientTransformation | None,
                         plain_config: dict) -> dict:
    """Calibrate K fields to a state x domain panel (`domains.py`) and report into `out_dir`; with
    `evaluation.rolling_origin`, first at each origin against persistence and national drift."""
    claim_run_folder(out_dir, cfg, ignore=("fit.stop_after", "fit.progress"))
    started = time.perf_counter()
    data = load_domain_dataset(cfg.data)
    log.info("data: %d states x %d fields, periods %d-%d", data.num_regions, len(data.domains), data.periods[0],
             data.periods[-1])
    evaluation = None
    if cfg.evaluation.rolling_origin:
        evaluation = evaluate_panel(data, cfg, optimizer=optimizer, checkpoint=out_dir / "checkpoint_origin")
    calibration = calibrate_panel(data, cfg, optimizer=optimizer, checkpoint=out_dir / "checkpoint")
    with RunOutputs(out_dir) as out:
        summary = writers.write_panel_calibration(out, cfg, data, calibration, evaluation,
                                                  seconds=time.perf_counter() - started, plain=plain_config)
    log.info("calibrated in %.0f s; loss per observation %.4f; inventors' deviance explained %.3f -> %s", summary["seconds"],
             summary["loss_per_observation"], summary["fit"]["deviance_explained_vs_constant"], out_dir)
    return summary


def run_forecast(cfg: ForecastConfig, out_dir: Path, *, plain_config: dict) -> dict:
    """Forecast patents for the years asked from a calibrated run; writes `forecast.csv`."""
    first, last = parse_years(cfg.years)
    calibration = load_calibration(Path(cfg.run))
    data = load_dataset(calibration.config.data)
    result = forecast(calibration, data, first, last, draws=cfg.draws, level=cfg.level, key=jax.random.key(cfg.seed))
    source = "NUTS posterior" if calibration.posterior is not None else "Laplace approximation"
    with RunOutputs(out_dir) as out:
        summary = writers.write_forecast(out, result, level=cfg.level, run=str(cfg.run), config=plain_config, draws_from=source)
    moved = "" if result.level is None else (f", each region's filtered level moved with {result.level.passthrough:.2f} of "
                                             f"the path's regional change and a random walk of step {result.level.tau:.3f}")
    if result.count_dispersion is not None:
        moved += ", counts around it of dispersion " + " / ".join(f"{r:.0f}" for r in result.count_dispersion)
    log.info("forecast %d-%d for %d regions, parameter draws from the %s%s -> %s", first, last, data.num_regions, source,
             moved, out_dir / "forecast.csv")
    return summary


def _robust_policy(cfg: OptimizeConfig, calibration, data, at_estimate: PolicyProblem, result, out_dir: Path) -> Robust:
    """The allocation that maximises the expected objective over `policy.draws` draws of the
    calibration (Laplace or NUTS), and it and the estimate's optimum judged on
    `policy.holdout_draws` other draws (`comparison.held_out_comparison`)."""
    settings = cfg.policy
    posterior = calibration.posterior if settings.uncertainty == "posterior" else None
    total = settings.draws + settings.holdout_draws
    sampled = draw_estimates(calibration.estimate, calibration.mask, calibration.laplace, key=jax.random.key(cfg.optimize.seed),
                             num=total, posterior=posterior)
    initial, drivers, graph = calibrated_regions(calibration, data, sampled)

    def part(rows: slice) -> PolicyProblem:
        take = lambda tree: jax.tree_util.tree_map(lambda x: x[rows], tree)  # noqa: E731
        problem = PolicyProblem.build(settings, take(sampled.params), take(initial), take(drivers), graph,
                                      draws=rows.stop - rows.start)
        return shard_regions(problem, region_mesh(cfg.runtime.devices), problem.num_regions)

    robust_problem, holdout = part(slice(0, settings.draws)), part(slice(settings.draws, total))
    log.info("optimize: the expected objective over %d %s draws (each step simulates every draw)", settings.draws,
             settings.uncertainty)
    robust = optimize(robust_problem, cfg.optimize, checkpoint_path=out_dir / "checkpoint_robust",
                      phase=f"optimize: mirror ascent, expected over {settings.draws} draws")
    table, values = held_out_comparison(holdout, at_estimate, {"robust": robust.spend, "estimate_optimal": result.spend})
    return Robust(settings.uncertainty, settings.draws, robust, table, values)


def run_optimize(cfg: OptimizeConfig, out_dir: Path, *, plain_config: dict) -> dict:
    """Optimize the allocation, run the baselines, and report into `out_dir`."""
    calibrated = (Path(cfg.run) / "fitted.eqx",) if cfg.source == "run" and (Path(cfg.run) / "fitted.eqx").exists() else ()
    claim_run_folder(out_dir, cfg, ignore=("optimize.stop_after", "optimize.progress"), inputs=calibrated)
    started = time.perf_counter()
    if cfg.source == "run":
        calibration = load_calibration(Path(cfg.run))
        if cfg.policy.uncertainty == "posterior" and calibration.posterior is None:
            raise ConfigError(f"policy.uncertainty=posterior needs posterior draws, and the run {cfg.run} has none: "
                              "calibrate it with inference=nuts, or use policy.uncertainty=laplace")
        data = load_dataset(calibration.config.data)
        params, names = calibration.params, data.names
        initial, drivers, graph = calibrated_regions(calibration, data)
    else:
        params = Params.from_natural(cfg.model.num_domains, **cfg.model.params)
        scenario, _ = scenario_from_config(params, cfg.scenario)
        names, initial, drivers, graph = scenario.region_names, scenario.initial, scenario.drivers, scenario.graph
    problem = PolicyProblem.build(cfg.policy, params, initial, drivers, graph)
    problem = shard_regions(problem, region_mesh(cfg.runtime.devices), problem.num_regions)
    result = optimize(problem, cfg.optimize, checkpoint_path=out_dir / "checkpoint")
    size = np.asarray(initial.regions.active).sum(-1)
    methods = compare_methods(problem, result, size, seed=cfg.optimize.seed) if cfg.optimize.baselines else \
        {"gradient": (result.spend, result.evaluations)}
    robust = None if cfg.policy.uncertainty == "none" else _robust_policy(cfg, calibration, data, problem, result, out_dir)
    with RunOutputs(out_dir) as out:
        summary = writers.write_policy(out, problem, tuple(names), result, methods, seconds=time.perf_counter() - started,
                                       config=plain_config, robust=robust)
    if robust is not None:
        rows = {row["allocation"]: row for row in robust.table}
        log.info("on %d held-out %s draws: robust mean %.6g (5%%: %.6g), estimate's optimum mean %.6g (5%%: %.6g)",
                 cfg.policy.holdout_draws, cfg.policy.uncertainty, rows["robust"]["mean"], rows["robust"]["q05"],
                 rows["estimate_optimal"]["mean"], rows["estimate_optimal"]["q05"])
    baselines = [row["objective"] for row in summary["comparison"] if row["method"] != "gradient"]
    compared = f" (best baseline {max(baselines):.6g})" if baselines else ""
    log.info("optimized in %.0f s: objective %.6g%s -> %s", result.seconds, result.objective, compared, out_dir)
    return summary
