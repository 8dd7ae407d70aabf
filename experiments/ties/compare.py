"""The calibration with the observed tie graph (experiments/us_metros/run), without it
(run_no_ties), with its strength fitted (run_tie_scale) and with each tie's first-year strength
from its 1976-1999 transfers (run_earlier_ties), and with the non-local share reading the graph
(run_tie_share, `nonlocal_tie_slope` fitted): fit, estimates and rolling-origin scores side by side.

    python experiments/ties/compare.py experiments/ties

Writes `comparison.csv` (`origin,method,measure,with_ties,without_ties,tie_scale_fitted,earlier_ties,tie_share_fitted`),
`fit.csv` and `params.csv` into the folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

MEASURES = ["male", "mae", "rmse", "interval_90", "coverage_90", "interval_50", "coverage_50"]


def main(folder: Path) -> None:
    runs = {"with_ties": folder.parent / "us_metros" / "run", "without_ties": folder / "run_no_ties",
            "tie_scale_fitted": folder / "run_tie_scale", "earlier_ties": folder / "run_earlier_ties",
            "tie_share_fitted": folder / "run_tie_share"}
    summaries = {name: json.loads((run / "summary.json").read_text()) for name, run in runs.items()}
    fit = pd.DataFrame({name: {"loss_per_observation": s["loss_per_observation"], "observations": s["observations"],
                               "deviance_explained_vs_region_mean": s["fit"]["deviance_explained_vs_region_mean"],
                               "polish_converged": s["polish_converged"], "seconds": s["seconds"]}
                        for name, s in summaries.items()})
    fit.index.name = "measure"
    fit.to_csv(folder / "fit.csv")
    params = pd.concat({name: pd.read_csv(run / "params.csv").set_index("parameter")[["value", "se"]]
                        for name, run in runs.items()}, axis=1)
    params.columns = [f"{a}_{b}" for a, b in params.columns]
    params.to_csv(folder / "params.csv")
    tables = {name: pd.read_csv(run / "evaluation.csv").set_index(["origin", "method"])[MEASURES] for name, run in runs.items()}
    long = pd.concat({name: t.stack() for name, t in tables.items()}, axis=1).rename_axis(["origin", "method", "measure"])
    long = long.reset_index()
    long.to_csv(folder / "comparison.csv", index=False)
    model = long[long.method == "model"].pivot(index="measure", columns="origin", values=list(runs))
    print(fit.to_string())
    print(model.loc[MEASURES].round(4).to_string())
    weights = [p for p in params.index if p.endswith("_weight")] + ["tie_scale", "tie_formation", "nonlocal_intercept",
                                                                     "nonlocal_connectedness_slope", "nonlocal_overlap_slope",
                                                                     "nonlocal_tie_slope"]
    print(params.loc[[w for w in weights if w in params.index]].round(3).to_string())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
