"""How an allocation compares: with the gradient-free baselines at equal evaluations, and under
parameter uncertainty on draws it was not chosen on.

The baselines (`random_search`, `evolution_strategy`) get exactly the simulator evaluations the
gradient method used (`compare_methods`); a robust allocation and the estimate's optimum are
each judged on held-out draws of the parameters (`held_out_comparison`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .policy import (
    PolicyProblem,
    PolicyResult,
    draw_objectives,
    evaluate,
    feasible,
    objectives,
    proportional_allocation,
    uniform_allocation,
)


@eqx.filter_jit
def _dirichlet_allocations(problem: PolicyProblem, key: jax.Array, count: int) -> jax.Array:
    draws = jax.random.dirichlet(key, jnp.ones(int(np.prod(problem.shape))), (count,)) * problem.budget
    return jax.vmap(lambda d: feasible(problem, d.reshape(problem.shape)))(draws)


def random_search(problem: PolicyProblem, evaluations: int, *, key: jax.Array, batch: int = 32) -> PolicyResult:
    """Best of `evaluations` allocations drawn uniformly from the simplex (Dirichlet(1)), projected."""
    started = time.perf_counter()
    best, best_value, history, done = None, -np.inf, [], 0
    while done < evaluations:
        n = min(batch, evaluations - done)
        key, sub = jax.random.split(key)
        draws = _dirichlet_allocations(problem, sub, batch)
        values = np.asarray(objectives(problem, draws))[:n]
        j = int(np.argmax(values))
        if values[j] > best_value:
            best, best_value = np.asarray(draws[j]), float(values[j])
        history += values.tolist()
        done += n
    return PolicyResult(best, best_value, history, done, time.perf_counter() - started)


@eqx.filter_jit
def _softmax_allocations(problem: PolicyProblem, logits: jax.Array) -> jax.Array:
    """Allocations `budget x softmax(logits)` (projected, for the caps), one per row of `logits`."""
    return jax.vmap(lambda z: feasible(problem, (problem.budget * jax.nn.softmax(z)).reshape(problem.shape)))(logits)


def evolution_strategy(
    problem: PolicyProblem, evaluations: int, *, key: jax.Array, population: int = 16, sigma: float = 0.3, rate: float = 0.3
) -> PolicyResult:
    """A gradient-free evolution strategy on softmax logits (antithetic sampling, rank weights).

    The allocation is `budget x softmax(logits)` (projected when capped); each generation
    spends `population` evaluations (the last one fewer, to use exactly `evaluations`, rounded
    down to an even number); the search mean moves along the rank-weighted noise.
    """
    started = time.perf_counter()
    cells = int(np.prod(problem.shape))
    mean = jnp.zeros(cells)
    best, best_value, history, done = np.asarray(_softmax_allocations(problem, mean[None])[0]), -np.inf, [], 0
    while evaluations - done >= 2:  # the last generation may be smaller, so no evaluation is left unused
        half = min(population, evaluations - done) // 2
        key, sub = jax.random.split(key)
        noise = jax.random.normal(sub, (half, cells))
        spends = _softmax_allocations(problem, jnp.concatenate([mean + sigma * noise, mean - sigma * noise]))
        values = np.asarray(objectives(problem, spends))
        done += 2 * half
        history += values.tolist()
        j = int(np.argmax(values))
        if values[j] > best_value:
            best, best_value = np.asarray(spends[j]), float(values[j])
        ranks = np.argsort(np.argsort(values)) / (2 * half - 1) - 0.5
        direction = (jnp.asarray(ranks[:half] - ranks[half:])[:, None] * noise).sum(0) / (half * sigma)
        mean = mean + rate * direction
    return PolicyResult(best, best_value, history, done, time.perf_counter() - started)


def compare_methods(problem: PolicyProblem, result: PolicyResult, size: np.ndarray, *, seed: int = 0) -> dict:
    """The gradient method's allocation and the baselines', with their simulator evaluations:
    uniform, proportional to `size` (R,), and random search and an evolution strategy given as
    many evaluations as the gradient method used. Method -> (allocation, evaluations)."""
    random = random_search(problem, result.evaluations, key=jax.random.key(seed))
    es = evolution_strategy(problem, result.evaluations, key=jax.random.key(seed + 1))
    return {
        "gradient": (result.spend, result.evaluations),
        "uniform": (np.asarray(uniform_allocation(problem)), 1),
        "proportional_to_size": (np.asarray(proportional_allocation(problem, size)), 1),
        "random_search": (random.spend, random.evaluations),
        "evolution_strategy": (es.spend, es.evaluations),
    }


# --------------------------------------------------------------------------------------------
# Under parameter uncertainty
# --------------------------------------------------------------------------------------------

ROBUSTNESS_COLUMNS = ("allocation", "mean", "q05", "q95", "p_beats_no_policy", "p_beats_uniform", "at_estimate")


@dataclass
class Robust:
    """A policy chosen under parameter uncertainty (`diffcomm optimize policy.uncertainty=...`)."""

    draws_from: str  # laplace or posterior
    draws: int  # draws the expected objective averaged over
    result: PolicyResult  # the allocation that maximises the expected objective over the draws
    table: list[dict]  # `held_out_comparison`'s rows: robust and the estimate's optimum on held-out draws
    values: dict[str, np.ndarray]  # allocation -> objective under each held-out draw (S,)


def held_out_comparison(holdout: PolicyProblem, at_estimate: PolicyProblem, allocations: dict[str, np.ndarray]
                        ) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Each allocation judged on draws not used to choose it (`holdout`, a problem with draws).

    **Returns:** one row per allocation (`ROBUSTNESS_COLUMNS`): the mean, 5% and 95% quantiles
    of its objective over the held-out draws, the share of draws in which it beats no policy and
    in which it beats the uniform allocation (each draw compares both under the same
    parameters), and its objective at the calibration's estimate (`at_estimate`); and the
    held-out values themselves, allocation -> (S,), with `no_policy` and `uniform` added.
    """
    values = {name: np.asarray(draw_objectives(holdout, jnp.asarray(spend))) for name, spend in allocations.items()}
    values["uniform"] = np.asarray(draw_objectives(holdout, uniform_allocation(holdout)))
    values["no_policy"] = np.asarray(draw_objectives(holdout, jnp.zeros(holdout.shape)))
    rows = []
    for name, spend in allocations.items():
        v = values[name]
        rows.append(dict(allocation=name, mean=float(v.mean()), q05=float(np.quantile(v, 0.05)),
                         q95=float(np.quantile(v, 0.95)), p_beats_no_policy=float(np.mean(v > values["no_policy"])),
                         p_beats_uniform=float(np.mean(v > values["uniform"])),
                         at_estimate=float(evaluate(at_estimate, jnp.asarray(spend))[0])))
    return rows, values
