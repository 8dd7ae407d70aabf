"""Compare the allocations that raise patents and the catchment share.

    python experiments/policy/compare.py experiments/policy
"""

import json
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def load(folder: Path) -> pd.DataFrame:
    frame = pd.read_csv(folder / "allocation.csv", dtype={"region": str})
    return frame.groupby(["region", "lever"]).spend.sum().unstack("lever")


def main(here: Path) -> None:
    runs = {name: load(here / name) for name in ("patents", "catchment")}
    a, b = (runs[n].reindex(index=runs["patents"].index, columns=runs["patents"].columns).fillna(0) for n in runs)
    by_lever = pd.DataFrame({n: r.sum() / r.values.sum() for n, r in runs.items()})
    by_region = pd.DataFrame({n: r.sum(axis=1) for n, r in runs.items()})
    top = {n: set(by_region[n].nlargest(20).index) for n in runs}
    summary = {
        "correlation_of_cells": float(np.corrcoef(a.values.ravel(), b.values.ravel())[0, 1]),
        "correlation_of_regions": float(np.corrcoef(by_region.patents, by_region.catchment)[0, 1]),
        "shared_top20_regions": len(top["patents"] & top["catchment"]),
        "total_variation_distance": float(0.5 * np.abs(a.values / a.values.sum() - b.values / b.values.sum()).sum()),
        "share_by_lever": by_lever.round(4).to_dict(),
        "comparison": {n: pd.read_csv(here / n / "comparison.csv").to_dict(orient="records") for n in runs},
        "parts": {n: pd.read_csv(here / n / "objective_parts.csv", index_col=0).to_dict() for n in runs},
    }
    (here / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    names = pd.read_csv(here.parents[1] / "src/diffcomm/datasets/us_cbsa/patents.csv", dtype={"cbsa_code": str})
    names = names.drop_duplicates("cbsa_code").set_index("cbsa_code").cbsa_name
    for n in runs:
        top_regions = by_region[n].nlargest(10)
        summary[f"top10_{n}"] = [(names.get(code, code), round(float(v), 1)) for code, v in top_regions.items()]
    robust = here / "catchment" / "summary.json"  # the catchment run also under parameter uncertainty
    if robust.exists() and "uncertainty" in (catchment := json.loads(robust.read_text())):
        summary["uncertainty_catchment"] = catchment["uncertainty"]
        shutil.copy(here / "catchment" / "robustness.png", here / "robustness_catchment.png")
    (here / "results.json").write_text(json.dumps(summary, indent=2) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    by_lever.plot.bar(ax=axes[0])
    axes[0].set_ylabel("share of the budget")
    axes[0].set_title("where the budget goes, by lever")
    axes[1].scatter(by_region.patents, by_region.catchment, s=8)
    axes[1].set_xlabel("spending per region: patents objective")
    axes[1].set_ylabel("spending per region: catchment objective")
    axes[1].set_title(f"by region (correlation {summary['correlation_of_regions']:.2f})")
    fig.savefig(here / "comparison.png", dpi=110)
    for n in runs:
        shutil.copy(here / n / "allocation.png", here / f"allocation_{n}.png")
        shutil.copy(here / n / "objective.png", here / f"objective_{n}.png")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("parts",)}, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
