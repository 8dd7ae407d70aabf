"""The five archetypes over 50 years, and the critical-mass diagram.

    python experiments/archetypes/run.py [--out experiments/archetypes]

Writes `archetypes.png` (main trajectories per archetype), `critical_mass.png` (final community
size against initial size), `results.json` and `results.md` (the numbers quoted in the README).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffcomm.cli import compose, to_typed  # noqa: E402
from diffcomm.inputs import Drivers, Graph  # noqa: E402
from diffcomm.model import init_state  # noqa: E402
from diffcomm.params import Params  # noqa: E402
from diffcomm.report.figures import plot_archetype_trajectories  # noqa: E402
from diffcomm.report.tables import archetype_summary  # noqa: E402
from diffcomm.scenario import scenario_from_config, synthetic_regions  # noqa: E402
from diffcomm.simulate import make_forcing, simulate, simulate_ensemble, stack  # noqa: E402

CONFIG = to_typed(compose("simulate", ["experiment=archetypes"]), "simulate")  # conf/experiment/archetypes.yaml
YEARS, SEED = CONFIG.scenario.years, CONFIG.scenario.seed


def archetype_runs(out: Path) -> dict:
    params = Params.from_natural(CONFIG.model.num_domains, **CONFIG.model.params)
    scenario, forcing = scenario_from_config(params, CONFIG.scenario)
    _, traj = simulate(params, scenario.initial, scenario.drivers, scenario.graph, forcing)
    plot_archetype_trajectories(scenario, traj, out / "archetypes.png", title="five archetypes, 20 regions each, 50 years")
    table = archetype_summary(scenario, traj)
    columns = ["archetype", "active_first", "active_last", "knowledge_last", "overlap_last", "internationalization_last",
               "development_last", "local_connectedness_last", "catchment_share_last", "patents_first", "patents_last"]
    return table[columns].round(3).to_dict(orient="records")


def profile_drivers(profile: str, params: Params) -> Drivers:
    """Drivers of one region: an archetype without noise, or the average region (all z-scores 0)."""
    if profile == "average_region":
        return Drivers.uniform(1, 1)
    return synthetic_regions(params, {profile: 1}, key=jax.random.key(SEED), noise=0.0, ties_per_region=0).drivers


def critical_mass_sweep(profile: str, initial_sizes: np.ndarray, params: Params) -> np.ndarray:
    """Final active members after YEARS for one region of `profile` started at each size (K = 1).

    Each start is its own ensemble member, so regions do not interact: one compiled call.
    """
    drivers = profile_drivers(profile, params)
    graph = Graph.empty()
    initials = stack([init_state(params, graph, active=jnp.full((1, 1), a0), knowledge=10.0) for a0 in initial_sizes])
    forcing = make_forcing(YEARS, 1)
    batch = lambda tree: jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (len(initial_sizes), *jnp.shape(x))), tree)  # noqa: E731
    final, _ = simulate_ensemble(params, initials, drivers, graph, batch(forcing), in_axes=(None, 0, None, None, 0))
    return np.asarray(final.regions.active[:, 0, 0])


def critical_mass_diagram(out: Path) -> dict:
    params = Params.from_natural(1)
    critical = float(params.natural().critical_mass[0])
    sizes = np.geomspace(0.3, 300.0, 400)
    fig, ax = plt.subplots(figsize=(7, 5.5), constrained_layout=True)
    thresholds = {}
    for profile in ("average_region", "normal_region", "specialized_cluster", "immigrant_gateway"):
        final = critical_mass_sweep(profile, sizes, params)
        steepest = int(np.argmax(np.diff(np.log(final))))
        threshold = float(np.sqrt(sizes[steepest] * sizes[steepest + 1]))
        below, above = np.interp(np.log([threshold / 2, threshold * 2]), np.log(sizes), final)
        thresholds[profile] = dict(
            threshold_initial_size=threshold,
            final_from_half_threshold=float(below),
            final_from_twice_threshold=float(above),
            jump_factor=float(above / below),
        )
        ax.plot(sizes, final, label=profile.replace("_", " "))
    ax.plot(sizes, sizes, color="grey", lw=0.8, ls=":", label="final = initial")
    ax.axvline(critical, color="black", lw=0.8, ls="--", label=f"critical mass A* = {critical:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("initial active members A0 (hundreds)")
    ax.set_ylabel(f"active members after {YEARS} years")
    ax.set_title("critical mass: two fates separated by a threshold")
    ax.legend(fontsize=8)
    fig.savefig(out / "critical_mass.png", dpi=110)
    plt.close(fig)
    return dict(critical_mass=critical, profiles=thresholds)


def markdown(results: dict) -> str:
    lines = ["| archetype | A year 1 | A year 50 | G year 50 | X | F | Y | Lc | S | patents year 1 | patents year 50 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["archetypes"]:
        lines.append("| " + " | ".join(str(v) for v in row.values()) + " |")
    lines += ["", "| profile | steepest A0 | A after 50 y from half of it | from twice it | ratio |", "|---|---|---|---|---|"]
    for name, t in results["critical_mass"]["profiles"].items():
        lines.append(f"| {name} | {t['threshold_initial_size']:.1f} | {t['final_from_half_threshold']:.2f} | "
                     f"{t['final_from_twice_threshold']:.2f} | x{t['jump_factor']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = dict(archetypes=archetype_runs(args.out), critical_mass=critical_mass_diagram(args.out))
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
