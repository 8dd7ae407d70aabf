"""The gradient method against the baselines on every shipped scenario and policy objective.

For each `conf/scenario/*.yaml` x `conf/policy/*.yaml` (with `source=scenario`, as `diffcomm
optimize` composes them) builds the policy problem, runs `policy.optimize` with the default
`OptimizeSettings` and `comparison.compare_methods`, and prints one row per combination: the
objective of every method, the simulator evaluations, and the gradient method's margin over the
best baseline. Writes JSON (default `benchmarks/results/policy_methods_<platform>.json`).

    python benchmarks/policy_methods.py [--scenarios archetypes normal_regions] [--policies development]
        [--max-regions N] [--out FILE] [override ...]

`--max-regions N` keeps at most N regions of a scenario, scaling its archetype counts down in
proportion (for `large` on a small machine); trailing arguments are Hydra overrides of
`diffcomm optimize`, e.g. `optimize.steps=100`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # as `diffcomm optimize` (model.x64=true)

import numpy as np  # noqa: E402

from diffcomm import cli  # noqa: E402
from diffcomm.comparison import compare_methods  # noqa: E402
from diffcomm.params import Params  # noqa: E402
from diffcomm.policy import PolicyProblem, evaluate, optimize  # noqa: E402
from diffcomm.scenario import scenario_from_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

CONF = Path(__file__).parents[1] / "conf"
METHODS = ("gradient", "uniform", "proportional_to_size", "random_search", "evolution_strategy")


def scaled_counts(counts: dict[str, int], max_regions: int | None) -> list[str]:
    """Overrides that scale the archetype counts down to at most `max_regions` regions in all."""
    total = sum(counts.values())
    if max_regions is None or total <= max_regions:
        return []
    return [f"scenario.counts.{name}={int(count * max_regions / total)}" for name, count in counts.items()]


def run_one(scenario: str, policy: str, overrides: list[str], max_regions: int | None) -> dict:
    chosen = [f"scenario={scenario}", f"policy={policy}", "optimize.progress=false", *overrides]
    cfg = cli.to_typed(cli.compose("optimize", chosen), "optimize")
    extra = scaled_counts(dict(cfg.scenario.counts), max_regions)
    if extra:
        cfg = cli.to_typed(cli.compose("optimize", chosen + extra), "optimize")
    params = Params.from_natural(cfg.model.num_domains, **cfg.model.params)
    regions, _ = scenario_from_config(params, cfg.scenario)
    problem = PolicyProblem.build(cfg.policy, params, regions.initial, regions.drivers, regions.graph)
    started = time.perf_counter()
    result = optimize(problem, cfg.optimize)
    seconds = time.perf_counter() - started
    size = np.asarray(regions.initial.regions.active).sum(-1)
    methods = compare_methods(problem, result, size, seed=cfg.optimize.seed)
    values = {name: float(evaluate(problem, spend)[0]) for name, (spend, _) in methods.items()}
    evaluations = {name: int(n) for name, (_, n) in methods.items()}
    best_baseline = max(v for name, v in values.items() if name != "gradient")
    return dict(scenario=scenario, policy=policy, regions=problem.num_regions, cells=int(np.prod(problem.shape)),
                objective=values, evaluations=evaluations, margin=values["gradient"] - best_baseline,
                gradient_seconds=seconds, best_step=int(np.argmax(result.history)), history_every_10=result.history[::10])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="*", default=sorted(p.stem for p in (CONF / "scenario").glob("*.yaml")))
    parser.add_argument("--policies", nargs="*", default=sorted(p.stem for p in (CONF / "policy").glob("*.yaml")))
    parser.add_argument("--max-regions", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    rows = []
    print("| scenario | policy | regions | " + " | ".join(METHODS) + " | evaluations | gradient - best baseline |")
    print("|---" * (len(METHODS) + 5) + "|")
    for scenario in args.scenarios:
        for policy in args.policies:
            row = run_one(scenario, policy, args.overrides, args.max_regions)
            rows.append(row)
            values = " | ".join(f"{row['objective'][m]:.5f}" for m in METHODS)
            print(f"| {scenario} | {policy} | {row['regions']} | {values} | {row['evaluations']['gradient']} | "
                  f"{row['margin']:+.5f} |", flush=True)
    write_result(dict(overrides=args.overrides, max_regions=args.max_regions, rows=rows), "policy_methods", args.out)


if __name__ == "__main__":
    main()
