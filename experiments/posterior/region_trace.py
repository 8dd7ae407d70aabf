"""One region effect's draws, chain by chain, in one or more NUTS runs, one panel each.

    python experiments/posterior/region_trace.py <out.png> <region code> <label>=<run folder> [<label>=<run folder> ...]

Reads each run's `posterior.nc` (`diffcomm calibrate inference=nuts`). Made for Miami's
buzz-quality effect (`miami_tail.png`: 33100, the default run against the two runs of branch
`try/flatten-curvature`).
"""

import sys
from pathlib import Path

import arviz as az
from matplotlib.figure import Figure


def main(out: Path, code: str, runs: list[tuple[str, Path]]) -> None:
    fig = Figure(figsize=(10, 2.3 * len(runs) + 0.5), layout="constrained")
    axes = fig.subplots(len(runs), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    for ax, (label, run) in zip(axes, runs):
        posterior = az.from_netcdf(str(run / "posterior.nc")).posterior
        effect = next(v for v in ("buzz_quality", "attraction") if v in posterior)
        values = posterior[effect]
        region = next(d for d in values.dims if d not in ("chain", "draw"))
        draws = values.sel({region: code}).values
        for chain, x in enumerate(draws):
            ax.plot(x, lw=0.6, alpha=0.8, label=f"chain {chain}")
        ax.set_title(f"{label}: R-hat {float(az.rhat(draws)):.3f}, bulk ESS {float(az.ess(draws)):.0f}", fontsize=10)
        ax.set_ylabel(effect.replace("_", " "))
    axes[0].legend(ncol=4, fontsize=8, loc="lower left")
    axes[-1].set_xlabel("draw")
    fig.suptitle(f"Region {code}: the standardized effect, each chain's draws")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], [(a.split("=", 1)[0], Path(a.split("=", 1)[1])) for a in sys.argv[3:]])
