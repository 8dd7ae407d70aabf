"""Readable reports of a calibration and of a policy optimization (`report.md` in the run folder)."""

from __future__ import annotations

import pandas as pd


def calibration_report(summary: dict, table: pd.DataFrame) -> str:
    """A readable account of a calibration: parameters, fit, the rolling-origin test, data notes."""
    fit = summary["fit"]
    lines = [
        "# Calibration report", "",
        f"{summary['regions']} regions, years {summary['years'][0]}-{summary['years'][1]}, "
        f"{summary['observations']} observations; loss per observation {summary['loss_per_observation']:.4f}.",
        _fitted_as(summary),
        _latent_effects(summary),
        f"Restarts reached {', '.join(f'{x:.4f}' for x in summary['restart_losses'])} "
        f"({summary['steps']} steps, converged: {summary['converged']}); L-BFGS polish: {summary['polish_steps']} steps"
        f"{'' if summary.get('polish_converged') is None else ', converged: ' + str(summary['polish_converged'])}.",
        f"Laplace approximation positive definite: {summary['laplace_positive_definite']}.", "",
        "## Fitted parameters (natural scale; standard errors and 95% intervals from the Laplace approximation)", "",
        "The intervals are mapped from the unconstrained scale, so they respect each parameter's range.", "",
        "| parameter | value | se | 95% interval | meaning |", "|---|---|---|---|---|",
    ]
    for row in table.itertuples(index=False):
        interval = f"[{row.lower95:.3g}, {row.upper95:.3g}]"
        lines.append(f"| {row.parameter} | {row.value:.4g} | {row.se:.3g} | {interval} | {row.meaning} |")
    lines += [
        "", "## Fit", "",
        f"- deviance explained vs. one constant mean: {fit['deviance_explained_vs_constant']:.4f}",
        f"- deviance explained vs. each region's own mean: {fit['deviance_explained_vs_region_mean']:.4f}",
        "- per-region mean absolute log error, quantiles 10/50/90%: "
        + ", ".join(f"{v:.3f}" for v in fit["region_abs_log_error_quantiles"].values()),
    ]
    if "evaluation" in summary:
        lines += ["", "## Rolling origin: the model against four baselines", "",
                  "Each origin: calibrated on the years up to it, forecast of the next years. MALE: mean absolute error "
                  "of log(1 + count); interval scores on the same scale (lower is better); coverage of the central "
                  "intervals.", "",
                  "| origin | method | MALE | MAE | RMSE | IS 50% | IS 90% | cover 50% | cover 90% |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in summary["evaluation"]["table"]:
            lines.append(f"| {r['origin']} | {r['method']} | {r['male']:.4f} | {r['mae']:.2f} | {r['rmse']:.1f} | "
                         + " | ".join(_number(r[k], 3) for k in ("interval_50", "interval_90", "coverage_50", "coverage_90"))
                         + " |")
        lines += ["", "Does the model beat every baseline?", ""]
        for w in summary["evaluation"]["wins"]:
            lines.append(f"- {w['origin']}: MALE {'yes' if w['male'] else 'no'}; 90% interval score "
                         f"{'yes' if w['interval_90'] else 'no'}; 90% coverage within 85-95%: "
                         f"{'yes' if w['coverage_90_in_85_95'] else 'no'}")
    lines += ["", "## Data notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def _number(value: float, digits: int) -> str:
    return "–" if value != value else f"{value:.{digits}f}"  # NaN: not computed


def _fitted_as(summary: dict) -> str:
    """How the expected counts were made, which the loss depends on (losses of the two ways are not comparable)."""
    spin = summary.get("spin_up_years", 0)
    start = f", after a spin-up of {spin} years" if spin else ""
    if summary.get("fitted_as") == "one step ahead":
        return (f"Each year fitted one step ahead, from the year before's observed counts (data.one_step_ahead){start}; "
                "its loss is not comparable with a fit along the free path.")
    return f"Fitted along one free path from the first year's counts{start}."


def _latent_effects(summary: dict) -> str:
    """Which latent effects were estimated with the parameters (fit.region_effects, fit.national_effects)."""
    regions = summary.get("region_effects", [])
    parts = [f"each region's {' and '.join(name.replace('_', ' ') for name in regions)}" if regions else "no region effects",
             "national year effects" if summary.get("national_effects", False) else "no national effects"]
    return f"Latent effects estimated with the parameters: {'; '.join(parts)}."


def policy_report(summary: dict) -> str:
    """A readable account of a policy optimization: methods compared, objective parts, levers."""
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
    robust = summary.get("uncertainty")
    if robust:
        lines += ["", "## Under parameter uncertainty", "",
                  f"The robust allocation maximises the mean objective over {robust['draws']} {robust['draws_from']} draws "
                  f"of the calibration ({robust['robust_seconds']:.1f} s); both it and the optimum at the estimate are "
                  f"judged on {robust['holdout_draws']} other draws (each draw compares allocations under the same "
                  "parameters):", "",
                  "| allocation | mean | 5% | 95% | P(beats no policy) | P(beats uniform) | at the estimate |",
                  "|---|---|---|---|---|---|---|"]
        for row in robust["table"]:
            lines.append(f"| {row['allocation']} | {row['mean']:.6f} | {row['q05']:.6f} | {row['q95']:.6f} | "
                         f"{row['p_beats_no_policy']:.2f} | {row['p_beats_uniform']:.2f} | {row['at_estimate']:.6f} |")
        lines += ["", f"The two allocations place {100 * robust['budget_moved']:.1f}% of the budget differently. "
                  "Robust spending by lever: " + ", ".join(f"{k} {v:.3g}" for k, v in robust["spend_by_lever_robust"].items())
                  + "."]
    return "\n".join(lines) + "\n"


def panel_report(summary: dict, table: pd.DataFrame) -> str:
    """A readable account of a calibration on a state x domain panel."""
    fit = summary["fit"]
    lines = [
        "# Calibration report: state x domain panel", "",
        f"{summary['regions']} states x {len(summary['domains'])} fields, periods {summary['periods'][0]}-"
        f"{summary['periods'][-1]} (the first sets the initial state), {summary['observations']} observations; loss per "
        f"observation {summary['loss_per_observation']:.4f}.",
        f"Restarts reached {', '.join(f'{x:.4f}' for x in summary['restart_losses'])} ({summary['steps']} steps); "
        f"L-BFGS polish: {summary['polish_steps']} steps. Laplace approximation positive definite: "
        f"{summary['laplace_positive_definite']}.", "",
        "## Fitted parameters (natural scale; standard errors and 95% intervals from the Laplace approximation)", "",
        "A per-field parameter names its field. A standard error near the prior's (about the value's distance to the "
        "edge of one prior sd) means the data say little about it.", "",
        "| parameter | field | value | se | 95% interval | meaning |", "|---|---|---|---|---|---|",
    ]
    for row in table.itertuples(index=False):
        interval = f"[{row.lower95:.3g}, {row.upper95:.3g}]"
        domain = row.domain if isinstance(row.domain, str) else ""
        lines.append(f"| {row.parameter} | {domain} | {row.value:.4g} | {row.se:.3g} | {interval} | {row.meaning} |")
    lines += [
        "", "## Fit of the inventor counts", "",
        f"- deviance explained vs. one constant mean: {fit['deviance_explained_vs_constant']:.4f}",
        f"- deviance explained vs. each community's own mean: {fit['deviance_explained_vs_region_mean']:.4f}",
        "- mean absolute log error by period: " + ", ".join(f"{p} {v:.3f}" for p, v in summary["male_by_period"].items()),
    ]
    if "evaluation" in summary:
        lines += ["", "## Rolling origin: inventors forecast from each origin", "",
                  "Calibrated on the periods up to the origin; scored over the state-field cells observed at the origin "
                  "and in the next period. MALE: mean absolute error of log(1 + count); interval scores on that scale.", "",
                  "| origin | method | cells | MALE | MAE | RMSE | IS 50% | IS 90% | cover 50% | cover 90% |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in summary["evaluation"]:
            lines.append(f"| {r['origin']} | {r['method']} | {r['cells']} | {r['male']:.4f} | {r['mae']:.1f} | {r['rmse']:.1f} | "
                         + " | ".join(_number(r[k], 3) for k in ("interval_50", "interval_90", "coverage_50", "coverage_90"))
                         + " |")
    lines += ["", "## Data notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"
