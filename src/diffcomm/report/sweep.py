"""The table of a sweep: one row per run of a multirun, its overrides as columns and its key results.

A sweep folder holds one run folder per combination (named by its overrides; a value with a `/`,
such as `run=outputs/calibrate/x`, nests it deeper), each with what Hydra recorded (`.hydra/`) and,
once the run has finished, its `summary.json` (written last, `files.RunOutputs`), or `failed.txt`
if it ended in an error. `sweep_table` reads them back, whatever launcher ran the runs and however
many times the sweep was started; `finished_run` says whether a run folder already holds the
finished run of a given config, so that a sweep started again skips it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd
import yaml

from ..files import atomic_path

__all__ = ["FAILED_FILE", "SWEEP_FILE", "finished_run", "sweep_table", "write_sweep_table"]

SWEEP_FILE = "sweep.csv"
FAILED_FILE = "failed.txt"  # in a run folder: the error that ended the run


def _simulate(summary: dict, folder: Path) -> dict:
    """The mean of every variable in the last year, per archetype (`summary.csv`'s `*_last`); of
    an ensemble, per scenario the last year's total patents (mean and 5-95% over the draws) and
    its ratio to the first scenario's."""
    if "ensemble" in summary:
        return {f"{key}.{row['scenario']}": value for row in summary["ensemble"]["last_year"]
                for key, value in row.items() if key != "scenario"}
    return {f"{key}.{row['archetype']}": value for row in summary["archetypes"]
            for key, value in row.items() if key.endswith("_last")}


def _calibrate(summary: dict, folder: Path) -> dict:
    """The loss, the fit, and each driver weight with its standard error (`params.csv`)."""
    row = {"loss_per_observation": summary["loss_per_observation"],
           "deviance_explained": summary["fit"]["deviance_explained_vs_constant"],
           "polish_converged": summary["polish_converged"]}
    params = pd.read_csv(folder / "params.csv")
    for name, value, se in params[params.parameter.str.endswith("_weight")][["parameter", "value", "se"]].itertuples(index=False):
        row[name], row[f"{name}_se"] = value, se
    return row


def _forecast(summary: dict, folder: Path) -> dict:
    """The forecast of the sum over regions in the last year asked: mean and interval."""
    frame = pd.read_csv(folder / "forecast.csv")
    last = summary["total"][-1]
    return {"last_year": last["year"], "total_mean": float(frame[frame.year == last["year"]]["mean"].sum()),
            "total_lower": last["lower"], "total_upper": last["upper"]}


def _optimize(summary: dict, folder: Path) -> dict:
    """The gradient method's objective, the best baseline's, and the robust policy's held-out mean."""
    objectives = {row["method"]: row["objective"] for row in summary["comparison"]}
    baselines = {m: v for m, v in objectives.items() if m != "gradient"}
    row = {"objective": objectives["gradient"], "spent": summary["spent"]}
    if baselines:
        best = max(baselines, key=baselines.get)
        row |= {"best_baseline": best, "best_baseline_objective": baselines[best]}
    if "uncertainty" in summary:
        held_out = {r["allocation"]: r["mean"] for r in summary["uncertainty"]["table"]}
        row |= {"robust_mean": held_out.get("robust"), "estimate_optimal_mean": held_out.get("estimate_optimal")}
    return row


KEY_RESULTS: dict[str, Callable[[dict, Path], dict]] = {
    "simulate": _simulate, "calibrate": _calibrate, "forecast": _forecast, "optimize": _optimize}


def _overrides(folder: Path) -> dict[str, str]:
    """`key: value` of the run's task overrides (`+key` and `++key` as key; deletions `~key` left out)."""
    path = folder / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    pairs = [text.split("=", 1) for text in yaml.safe_load(path.read_text()) or [] if "=" in text and not text.startswith("~")]
    return {key.lstrip("+"): value for key, value in pairs}


def _job_number(folder: Path) -> int:
    """The run's job number in the latest start of the sweep (`.hydra/hydra.yaml`), -1 if unknown."""
    try:
        return int(yaml.safe_load((folder / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["num"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return -1


def _runs(folder: Path) -> list[Path]:
    """Every run folder under `folder` (one holding `.hydra/`), by job number; not the launcher's own."""
    runs = [p.parent for p in Path(folder).rglob(".hydra") if p.is_dir() and ".submitit" not in p.relative_to(folder).parts]
    return sorted(runs, key=lambda p: (_job_number(p), str(p)))


def sweep_table(folder: Path, command: str) -> pd.DataFrame:
    """One row per run folder of the sweep in `folder` (by job number): `folder` (relative to
    `folder`), `status` (`finished`; `failed`, with the error in `error`; or `unfinished`), the
    overrides, `seconds` and `command`'s key results (`KEY_RESULTS`)."""
    folder = Path(folder)
    rows = []
    for run in _runs(folder):
        row = {"folder": run.relative_to(folder).as_posix(), "status": "unfinished", **_overrides(run)}
        if (run / "summary.json").exists():
            summary = json.loads((run / "summary.json").read_text())
            row |= {"status": "finished", "seconds": summary.get("seconds"), **KEY_RESULTS[command](summary, run)}
        elif (run / FAILED_FILE).exists():
            row |= {"status": "failed", "error": (run / FAILED_FILE).read_text().strip()}
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["folder", "status"])


def write_sweep_table(folder: Path, command: str) -> pd.DataFrame:
    """`sweep_table` written to `<folder>/sweep.csv` (atomically); returns it."""
    table = sweep_table(folder, command)
    with atomic_path(Path(folder) / SWEEP_FILE) as tmp:
        table.to_csv(tmp, index=False)
    return table


def finished_run(folder: Path, config: dict) -> bool:
    """Whether `folder` holds a finished run (`summary.json`) of exactly `config` (the resolved
    config of the command, as its `summary.json` stores it), written after the calibration it
    read (`run=`, if any) was last saved."""
    path = Path(folder) / "summary.json"
    if not path.exists():
        return False
    try:
        stored = json.loads(path.read_text()).get("config")
    except (json.JSONDecodeError, AttributeError):
        return False
    source = Path(str(config.get("run"))) / "fitted.eqx" if config.get("run") else None
    if source is not None and source.exists() and source.stat().st_mtime > path.stat().st_mtime:
        return False  # the calibration it started from has changed since
    return stored == json.loads(json.dumps(config))
