"""Gradient-based policy optimization: where and when a budget of levers does the most good.

An allocation is spending per cell (region x lever, or year x region x lever); lever amounts are
spending divided by the lever's unit cost. Allocations are kept feasible exactly, by Euclidean
projection onto {spend >= 0, spend <= cap, sum spend = budget} after every step (projected
gradient ascent with an optax optimizer), never by a penalty; an optional cap per region bounds
the spending of all of a region's cells together. The objective is differentiated
through the whole simulation.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .model import Drivers, Graph, Levers, Params, State
from .simulate import Forcing, simulate

LEVERS = tuple(f.name for f in dataclasses.fields(Levers))
OBJECTIVE_PARTS = ("development", "patents", "catchment", "above_critical_mass", "inequality")


@dataclass(frozen=True)
class PolicyProblem:
    """What may be funded, at what cost, under which budget, judged by which objective.

    - `levers`: names from `Levers` that may be funded (others stay zero).
    - `costs`: cost of one unit of each lever in one region for one year, `(L,)`.
    - `budget`: total spending over the horizon.
    - `cap`: most spending one cell may receive (None: no cap).
    - `region_cap`: most spending one region may receive over all its levers and years (None: no cap).
    - `time_varying`: one allocation per year (`True`) or one spread evenly over the years.
    - `discount`: yearly discount factor of the objective.
    - `weights`: objective part -> weight; parts are divided by their size under no policy, so
      weights are unit-free; `inequality` is a penalty (its weight subtracts).
    """

    params: Params
    initial: State
    drivers: Drivers
    graph: Graph
    years: int
    levers: tuple[str, ...]
    costs: np.ndarray
    budget: float
    cap: float | None = None
    region_cap: float | None = None
    time_varying: bool = False
    discount: float = 0.97
    weights: dict = dataclasses.field(default_factory=lambda: {"development": 1.0})

    def __post_init__(self):
        unknown = sorted(set(self.levers) - set(LEVERS))
        if unknown or not self.levers:
            raise ValueError(f"levers must be a non-empty subset of {list(LEVERS)}, got {list(self.levers)}")
        if np.shape(self.costs) != (len(self.levers),) or np.any(np.asarray(self.costs) <= 0):
            raise ValueError(f"costs must be {len(self.levers)} positive numbers, got {self.costs}")
        if not self.budget >= 0:
            raise ValueError(f"budget must be >= 0, got {self.budget}")
        if self.cap is not None and self.cap * int(np.prod(self.shape)) < self.budget:
            raise ValueError(f"cap {self.cap} x {int(np.prod(self.shape))} cells cannot hold the budget {self.budget}")
        if self.region_cap is not None and self.region_cap * self.num_regions < self.budget:
            raise ValueError(f"region_cap {self.region_cap} x {self.num_regions} regions cannot hold the budget {self.budget}")
        bad = sorted(set(self.weights) - set(OBJECTIVE_PARTS))
        if bad:
            raise ValueError(f"unknown objective part(s) {bad}; known: {list(OBJECTIVE_PARTS)}")
        if not 0 < self.discount <= 1:
            raise ValueError(f"discount must lie in (0, 1], got {self.discount}")

    @property
    def num_regions(self) -> int:
        return int(self.drivers.connecting.shape[0])

    @functools.cached_property
    def baseline(self) -> dict[str, float]:
        """The objective's parts with no policy: simulated once per problem."""
        zero = Levers.zeros((self.years, self.num_regions))
        return {k: float(v) for k, v in objective_parts(self, zero).items()}

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of an allocation: (years or 1, regions, levers)."""
        return (self.years if self.time_varying else 1, self.num_regions, len(self.levers))


# --------------------------------------------------------------------------------------------
# Feasibility
# --------------------------------------------------------------------------------------------


def project(y: jax.Array, budget: float, cap: float | None = None, region_cap: float | None = None) -> jax.Array:
    """Euclidean projection of `y` (shape (T', R, L)) onto the feasible allocations.

    Feasible: `0 <= x <= cap` in every cell, at most `region_cap` in all of one region's cells
    (axis 1), and `sum x = budget`. The solution is `x = clip(y - tau - mu_r, 0, cap)`: `tau` by
    bisection on the total, and for each `tau` every region's `mu_r >= 0` by bisection on its
    own total (all regions at once). A last rescaling removes the rounding of the bisections.
    """
    upper = jnp.inf if cap is None else cap
    big = budget + jnp.max(jnp.abs(y)) + 1.0

    def region_totals(shift):  # shift broadcast over cells
        return jnp.sum(jnp.clip(y - shift, 0.0, upper), axis=(0, 2))

    def allocate(tau):
        if region_cap is None:
            return jnp.clip(y - tau, 0.0, upper)

        def body(_, bounds):  # per region: the smallest mu >= 0 with total <= region_cap
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            over = region_totals(tau + mid[None, :, None]) > region_cap
            return jnp.where(over, mid, lo), jnp.where(over, hi, mid)

        zeros = jnp.zeros(y.shape[1])
        top = jnp.maximum(jnp.max(y) - tau, 0.0) + 1.0  # at mu = top every cell is empty
        _, mu = jax.lax.fori_loop(0, 100, body, (zeros, zeros + top))
        mu = jnp.where(region_totals(tau + zeros[None, :, None]) > region_cap, mu, 0.0)
        return jnp.clip(y - tau - mu[None, :, None], 0.0, upper)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        too_much = jnp.sum(allocate(mid)) > budget
        return jnp.where(too_much, mid, lo), jnp.where(too_much, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 100, body, (jnp.min(y) - 2 * big, jnp.max(y)))
    x = allocate(0.5 * (lo + hi))
    total = jnp.sum(x)
    x = jnp.where(total > 0, x * (budget / jnp.where(total > 0, total, 1.0)), jnp.full_like(x, budget / x.size))
    if cap is not None:
        x = jnp.minimum(x, cap)
    if region_cap is not None:  # the rescaling moves totals by rounding only; keep them inside
        totals = jnp.sum(x, axis=(0, 2), keepdims=True)
        x = x * jnp.minimum(1.0, region_cap / jnp.maximum(totals, 1e-300))
    return x


def uniform_allocation(problem: PolicyProblem) -> jax.Array:
    return jnp.full(problem.shape, problem.budget / np.prod(problem.shape))


# --------------------------------------------------------------------------------------------
# Objective
# --------------------------------------------------------------------------------------------


def lever_amounts(problem: PolicyProblem, spend: jax.Array) -> Levers:
    """Lever amounts per year and region, `(T, R)` each, from an allocation of spending."""
    per_year = spend if problem.time_varying else jnp.broadcast_to(spend / problem.years, (problem.years, *spend.shape[1:]))
    amounts = per_year / jnp.asarray(problem.costs)
    zero = jnp.zeros((problem.years, problem.num_regions))
    return Levers(**{name: (amounts[..., problem.levers.index(name)] if name in problem.levers else zero) for name in LEVERS})


def objective_parts(problem: PolicyProblem, levers: Levers) -> dict[str, jax.Array]:
    """Each part of the objective for given lever amounts (before weighting and scaling)."""
    shock = jnp.zeros((problem.years, problem.num_regions))
    _, traj = simulate(problem.params, problem.initial, problem.drivers, problem.graph, Forcing(levers, shock),
                       checkpoint=True)
    p = problem.params.natural()
    weights = problem.discount ** jnp.arange(problem.years)
    regions = traj.regions
    final_active = jnp.sum(regions.active[-1], axis=-1)
    return dict(
        development=jnp.sum(weights * jnp.mean(regions.development, axis=1)),
        patents=jnp.sum(weights * jnp.sum(traj.observations.patents, axis=1)),
        catchment=jnp.sum(weights * jnp.mean(regions.catchment_share, axis=1)),
        above_critical_mass=jnp.sum(jax.nn.sigmoid(4.0 * (jnp.log(final_active) - jnp.log(jnp.sum(p.critical_mass))))),
        inequality=jnp.std(jnp.log(regions.development[-1])),
    )


def make_objective(problem: PolicyProblem) -> tuple[Callable[[jax.Array], jax.Array], dict[str, float]]:
    """The scalar objective of an allocation (to maximize), and the parts under no policy."""
    baseline = problem.baseline

    def objective(spend):
        parts = objective_parts(problem, lever_amounts(problem, spend))
        total = 0.0
        for name, weight in problem.weights.items():
            sign = -1.0 if name == "inequality" else 1.0
            total = total + sign * weight * parts[name] / max(abs(baseline[name]), 1e-12)
        return total

    return objective, baseline


def marginal_values(problem: PolicyProblem, spend: jax.Array) -> np.ndarray:
    """d objective / d (one more unit of lever l in region r, every year), `(R, L)`."""
    objective, _ = make_objective(problem)

    def of_amounts(amounts):  # amounts (T, R, L) per year
        return objective(amounts * jnp.asarray(problem.costs) if problem.time_varying
                         else jnp.sum(amounts, axis=0, keepdims=True) * jnp.asarray(problem.costs))

    levers = lever_amounts(problem, spend)
    amounts = jnp.stack([getattr(levers, name) for name in problem.levers], axis=-1)
    return np.asarray(jnp.sum(jax.grad(of_amounts)(amounts), axis=0))


# --------------------------------------------------------------------------------------------
# Optimizers: gradient and the baselines
# --------------------------------------------------------------------------------------------


@dataclass
class PolicyResult:
    spend: np.ndarray  # the best allocation found
    objective: float
    history: list[float]  # objective at every step
    evaluations: int  # simulator evaluations (a gradient step counts one: forward with its adjoint)
    seconds: float


def optimize(
    problem: PolicyProblem,
    *,
    steps: int = 200,
    learning_rate: float = 4.0,
    checkpoint_path: Path | None = None,
    checkpoint_every: int = 25,
    stop_after: int | None = None,
    progress: bool = True,
) -> PolicyResult:
    """Projected gradient ascent with Adam (warm-up, cosine decay) from the uniform allocation.

    `learning_rate` is relative: the largest steps are about `learning_rate x budget / cells`
    per cell, so that a few dozen steps can move the budget between cells.
    A checkpoint at `checkpoint_path` is resumed; `stop_after` stops (checkpointed) early,
    raising `calibrate.Interrupted`.
    """
    from .calibrate import checkpointed_loop, load_checkpoint, save_checkpoint

    from .calibrate import warmup_cosine

    objective, _ = make_objective(problem)
    scale = problem.budget / np.prod(problem.shape)
    optimizer = optax.adam(warmup_cosine(learning_rate * scale, steps))
    value_and_grad = eqx.filter_jit(jax.value_and_grad(objective))

    @eqx.filter_jit
    def step(spend, state):
        value, grad = value_and_grad(spend)
        updates, state = optimizer.update(jax.tree_util.tree_map(jnp.negative, grad), state, spend)
        return value, project(optax.apply_updates(spend, updates), problem.budget, problem.cap, problem.region_cap), state

    spend = uniform_allocation(problem)
    state = optimizer.init(spend)
    best, best_value, history, start = spend, -np.inf, [], 0
    if checkpoint_path is not None and Path(checkpoint_path).with_suffix(".json").exists():
        (spend, state, best), meta = load_checkpoint(checkpoint_path, (spend, state, best))
        history, start, best_value = meta["history"], meta["step"], meta["best"]

    current = dict(spend=spend, state=state, best=best, best_value=best_value)

    def one_step() -> dict:
        value, new_spend, new_state = step(current["spend"], current["state"])
        value = float(value)
        history.append(value)
        if value > current["best_value"]:  # `value` belongs to the allocation before the step
            current["best"], current["best_value"] = current["spend"], value
        current["spend"], current["state"] = new_spend, new_state
        return dict(objective=f"{current['best_value']:.6g}")

    def save(at: int) -> None:
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, (current["spend"], current["state"], current["best"]),
                            dict(step=at, history=history, best=current["best_value"]))

    started = time.perf_counter()
    checkpointed_loop(one_step, start=start, steps=steps, save=save, checkpoint_every=checkpoint_every,
                      stop_after=stop_after, checkpoint_path=checkpoint_path, progress=progress, desc="optimize")
    spend, best, best_value = current["spend"], current["best"], current["best_value"]
    final_value = float(objective(spend))
    if final_value > best_value:
        best, best_value = spend, final_value
    return PolicyResult(np.asarray(best), best_value, history, len(history) + 1, time.perf_counter() - started)


def _batched_objective(problem: PolicyProblem):
    objective, _ = make_objective(problem)
    return eqx.filter_jit(jax.vmap(objective))


def proportional_allocation(problem: PolicyProblem, size: np.ndarray) -> jax.Array:
    """Spending in proportion to region size, split evenly over levers (and years)."""
    share = np.asarray(size, float) / np.sum(size)
    spend = np.broadcast_to(share[None, :, None], problem.shape) * problem.budget / (problem.shape[0] * problem.shape[2])
    return project(jnp.asarray(spend), problem.budget, problem.cap, problem.region_cap)


def random_search(problem: PolicyProblem, evaluations: int, *, key: jax.Array, batch: int = 32) -> PolicyResult:
    """Best of `evaluations` allocations drawn uniformly from the simplex (Dirichlet(1)), projected."""
    started = time.perf_counter()
    batched = _batched_objective(problem)
    best, best_value, history, done = None, -np.inf, [], 0
    while done < evaluations:
        n = min(batch, evaluations - done)
        key, sub = jax.random.split(key)
        draws = jax.random.dirichlet(sub, jnp.ones(int(np.prod(problem.shape))), (batch,)) * problem.budget
        draws = jax.vmap(lambda d: project(d.reshape(problem.shape), problem.budget, problem.cap, problem.region_cap))(draws)
        values = np.asarray(batched(draws))[:n]
        j = int(np.argmax(values))
        if values[j] > best_value:
            best, best_value = np.asarray(draws[j]), float(values[j])
        history += values.tolist()
        done += n
    return PolicyResult(best, best_value, history, done, time.perf_counter() - started)


def evolution_strategy(
    problem: PolicyProblem, evaluations: int, *, key: jax.Array, population: int = 16, sigma: float = 0.3, rate: float = 0.3
) -> PolicyResult:
    """A gradient-free evolution strategy on softmax logits (antithetic sampling, rank weights).

    The allocation is `budget x softmax(logits)` (projected when capped); each generation
    spends `population` evaluations (the last one fewer, to use exactly `evaluations`, rounded
    down to an even number); the search mean moves along the rank-weighted noise.
    """
    started = time.perf_counter()
    batched = _batched_objective(problem)
    cells = int(np.prod(problem.shape))

    def allocation(logits):
        return project((problem.budget * jax.nn.softmax(logits)).reshape(problem.shape), problem.budget, problem.cap,
                       problem.region_cap)

    mean = jnp.zeros(cells)
    best, best_value, history, done = np.asarray(allocation(mean)), -np.inf, [], 0
    while evaluations - done >= 2:  # the last generation may be smaller, so no evaluation is left unused
        half = min(population, evaluations - done) // 2
        key, sub = jax.random.split(key)
        noise = jax.random.normal(sub, (half, cells))
        candidates = jnp.concatenate([mean + sigma * noise, mean - sigma * noise])
        spends = jax.vmap(allocation)(candidates)
        values = np.asarray(batched(spends))
        done += 2 * half
        history += values.tolist()
        j = int(np.argmax(values))
        if values[j] > best_value:
            best, best_value = np.asarray(spends[j]), float(values[j])
        ranks = np.argsort(np.argsort(values)) / (2 * half - 1) - 0.5
        direction = (jnp.asarray(ranks[:half] - ranks[half:])[:, None] * noise).sum(0) / (half * sigma)
        mean = mean + rate * direction
    return PolicyResult(best, best_value, history, done, time.perf_counter() - started)


def evaluate(problem: PolicyProblem, spend, objective: Callable | None = None) -> tuple[float, dict[str, float]]:
    """The objective and its raw parts for one allocation (`objective` from `make_objective`,
    built here if not given)."""
    objective = objective or make_objective(problem)[0]
    parts = objective_parts(problem, lever_amounts(problem, jnp.asarray(spend)))
    return float(objective(jnp.asarray(spend))), {k: float(v) for k, v in parts.items()}
