"""Readable reports of a calibration and of a policy optimization (`report.md` in the run folder)."""

from __future__ import annotations

import pandas as pd


def calibration_report(summary: dict, table: pd.DataFrame) -> str:
    """A readable account of a calibration: parameters, fit, the rolling-origin test, data notes."""
    fit = summary["fit"]
    level = summary["level"]
    lines = [
        "# Calibration report", "",
        f"{summary['regions']} regions, years {summary['years'][0]}-{summary['years'][1]}, "
        f"{summary['observations']} observations; loss per observation {summary['loss_per_observation']:.4f}.",
        f"Restarts reached {', '.join(f'{x:.4f}' for x in summary['restart_losses'])} "
        f"({summary['steps']} steps, converged: {summary['converged']}); L-BFGS polish: {summary['polish_steps']} steps.",
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
    if "rolling_origin" in summary:
        ro = summary["rolling_origin"]
        lines += ["", f"## Rolling origin: fit {ro['train_years'][0]}-{ro['train_years'][1]}, forecast "
                      f"{ro['test_years'][0]}-{ro['test_years'][1]}", "",
                  "| method | MAE | mean abs log error | RMSE |", "|---|---|---|---|"]
        for name, s in ro["scores"].items():
            lines.append(f"| {name} | {s['mae']:.2f} | {s['mean_abs_log_error']:.4f} | {s['rmse']:.2f} |")
        lines += ["", f"- coverage of the {100 * level:g}% interval: {ro['interval_coverage']:.3f}",
                  f"- share of regions where the model does worse than the better baseline: "
                  f"{ro['share_of_regions_where_model_is_worse_than_best_baseline']:.3f}",
                  "- regions where it does worst (excess mean absolute log error): "
                  + "; ".join(f"{w['name']} (+{w['excess_log_error']:.2f})" for w in ro["worse_regions"][:5])]
    lines += ["", "## Data notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


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
    return "\n".join(lines) + "\n"
