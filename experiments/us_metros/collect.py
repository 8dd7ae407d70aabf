"""Copy the figures of a calibration and its forecast beside this file and summarize them.

    python experiments/us_metros/collect.py experiments/us_metros
"""

import json
import shutil
import sys
from pathlib import Path

import pandas as pd


def main(here: Path) -> None:
    run, forecast = here / "run", here / "forecast"
    figures = ("fit.png", "loss.png", "rolling_origin.png", "evaluation.png")
    for source in (*(run / name for name in figures), forecast / "forecast.png"):
        shutil.copy(source, here / source.name)
    for name in ("report.md", "params.csv", "effects.csv", "evaluation.csv"):
        shutil.copy(run / name, here / name)
    summary = json.loads((run / "summary.json").read_text())
    frame = pd.read_csv(forecast / "forecast.csv", dtype={"region": str})
    totals = frame.groupby("year")[["mean", "lower", "upper"]].sum().round(0)
    observed = pd.read_csv(here.parents[1] / "src/diffcomm/datasets/us_cbsa/patents.csv", dtype={"cbsa_code": str})
    totals.loc[2010, "observed"] = observed[observed.year == 2010].patents.sum()
    total = pd.DataFrame(json.loads((forecast / "summary.json").read_text())["total"]).set_index("year")
    totals[["total_lower", "total_upper"]] = total[["lower", "upper"]].round(0)
    lines = ["| year | observed | forecast mean | 90% interval of the total | sum of lower bounds | sum of upper bounds |",
             "|---|---|---|---|---|---|"]
    for year, row in totals.sort_index().iterrows():
        interval = "" if pd.isna(row["total_lower"]) else f"{row['total_lower']:,.0f}–{row['total_upper']:,.0f}"
        cells = [row.get("observed"), row["mean"], interval, row["lower"], row["upper"]]
        lines.append(f"| {year} | " + " | ".join(c if isinstance(c, str) else "" if pd.isna(c) else f"{c:,.0f}" for c in cells)
                     + " |")
    (here / "forecast_totals.md").write_text("\n".join(lines) + "\n")
    keep = {k: summary[k] for k in ("regions", "observations", "loss_per_observation", "fit", "evaluation", "seconds")}
    (here / "results.json").write_text(json.dumps(keep, indent=2) + "\n")
    print((here / "report.md").read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
