"""Gradient-based policy optimization: where and when a budget of levers does the most good.

An allocation is spending per cell (region x lever, or year x region x lever); lever amounts are
spending divided by the lever's unit cost. Allocations are kept feasible exactly, by Euclidean
projection onto {spend >= 0, spend <= cap, sum spend = budget}, never by a penalty; an optional
cap per region bounds the spending of all of a region's cells together. The objective is
differentiated through the whole simulation and climbed by mirror ascent on the budget simplex
(`optimize`). A `PolicyProblem` is an `eqx.Module`, passed to the compiled functions as an
argument: each program is compiled once per problem shape. Built with `draws=S`, a problem holds
S parameter draws and the objective is their mean (one `vmap`); the baselines and the judging of
allocations on held-out draws are in `comparison.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from .errors import ConfigError
from .inputs import LEVERS, Drivers, Graph, Levers
from .model import critical_mass_switch
from .params import Params
from .simulate import make_forcing, simulate
from .state import State
from .training import Progress, load_checkpoint, run_steps, save_checkpoint, sgd_with_warmup, strongly_typed

if TYPE_CHECKING:
    from .config import OptimizeSettings, PolicyConfig


class PolicyProblem(eqx.Module):
    """What may be funded, at what cost, under which budget, judged by which objective.

    Build one with `PolicyProblem.build`. Arrays are leaves; the settings are static fields.
    `baseline` holds the objective's parts with no policy: the parts are divided by them, so the
    weights are unit-free.

    Under parameter uncertainty (`draws` > 0) `params`, `initial`, `drivers` and `baseline` carry
    a leading axis of `draws` draws of the calibration; the objective is then the mean over the
    draws of each draw's objective (its parts relative to its own no-policy baseline), one `vmap`.
    """

    params: Params
    initial: State
    drivers: Drivers
    graph: Graph
    costs: Float[Array, " l"]  # cost of one unit of each lever in one region for one year
    baseline: dict[str, Array]
    years: int = eqx.field(static=True)
    levers: tuple[str, ...] = eqx.field(static=True)
    budget: float = eqx.field(static=True)
    cap: float | None = eqx.field(static=True)  # most spending one cell may receive
    region_cap: float | None = eqx.field(static=True)  # most spending one region may receive, all cells
    time_varying: bool = eqx.field(static=True)  # one allocation per year, or one spread evenly
    discount: float = eqx.field(static=True)
    weights: tuple[tuple[str, float], ...] = eqx.field(static=True)  # (part, weight)
    draws: int = eqx.field(static=True, default=0)  # 0: one parameter set; else the leading axis above

    @classmethod
    def build(cls, config: PolicyConfig, params: Params, initial: State, drivers: Drivers, graph: Graph, *,
              draws: int = 0) -> PolicyProblem:
        """The problem of a (checked) `PolicyConfig` on given regions; simulates no policy once.

        `draws`: 0, or the number of parameter draws `params`, `initial` and `drivers` stack
        (`forecast.calibrated_regions` with draws). Raises `ConfigError` if the caps cannot hold
        the budget.
        """
        num_regions = int(drivers.connecting.shape[-1])
        cells = (config.years if config.time_varying else 1) * num_regions * len(config.levers)
        if config.cap is not None and config.cap * cells < config.budget:
            raise ConfigError(f"policy.cap {config.cap} x {cells} cells cannot hold the budget {config.budget}")
        if config.region_cap is not None and config.region_cap * num_regions < config.budget:
            raise ConfigError(f"policy.region_cap {config.region_cap} x {num_regions} regions cannot hold the budget "
                              f"{config.budget}")
        zero = Levers.zeros((config.years, num_regions))
        parts = lambda p, i, d: objective_parts(p, i, d, graph, zero, config.discount)  # noqa: E731
        baseline = eqx.filter_jit(jax.vmap(parts) if draws else parts)(params, initial, drivers)
        return cls(params, initial, drivers, graph, jnp.asarray([config.costs.get(n, 1.0) for n in config.levers], dtype=float),
                   baseline, config.years, tuple(config.levers), float(config.budget), config.cap, config.region_cap,
                   config.time_varying, config.discount, tuple(config.objective.items()), draws)

    @property
    def num_regions(self) -> int:
        return int(self.drivers.connecting.shape[-1])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of an allocation: (years or 1, regions, levers)."""
        return (self.years if self.time_varying else 1, self.num_regions, len(self.levers))


# --------------------------------------------------------------------------------------------
# Feasibility
# --------------------------------------------------------------------------------------------


@eqx.filter_jit
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
        x = x * jnp.minimum(1.0, region_cap / jnp.maximum(totals, jnp.finfo(x.dtype).tiny))
    return x


def feasible(problem: PolicyProblem, y: jax.Array) -> jax.Array:
    """`y` projected onto the problem's feasible allocations."""
    return project(y, problem.budget, problem.cap, problem.region_cap)


def uniform_allocation(problem: PolicyProblem) -> jax.Array:
    return jnp.full(problem.shape, problem.budget / np.prod(problem.shape))


def proportional_allocation(problem: PolicyProblem, size: np.ndarray) -> jax.Array:
    """Spending in proportion to region size, split evenly over levers (and years)."""
    share = np.asarray(size, float) / np.sum(size)
    spend = np.broadcast_to(share[None, :, None], problem.shape) * problem.budget / (problem.shape[0] * problem.shape[2])
    return feasible(problem, jnp.asarray(spend))


# --------------------------------------------------------------------------------------------
# Objective
# --------------------------------------------------------------------------------------------


def spend_per_year(problem: PolicyProblem, spend: jax.Array) -> jax.Array:
    """Spending in each year, region and lever `(T, R, L)`: an allocation constant in time is
    spread evenly over the years."""
    return spend if problem.time_varying else jnp.broadcast_to(spend / problem.years, (problem.years, *spend.shape[1:]))


def lever_amounts(problem: PolicyProblem, spend: jax.Array) -> Levers:
    """Lever amounts per year and region, `(T, R)` each, from an allocation of spending."""
    amounts = spend_per_year(problem, spend) / problem.costs
    zero = jnp.zeros((problem.years, problem.num_regions))
    return Levers(**{name: (amounts[..., problem.levers.index(name)] if name in problem.levers else zero) for name in LEVERS})


def objective_parts(params: Params, initial: State, drivers: Drivers, graph: Graph, levers: Levers,
                    discount: float) -> dict[str, jax.Array]:
    """Each part of the objective for given lever amounts (before weighting and scaling).

    `above_critical_mass` counts regions above the critical mass softly, with the model's own
    switch (`model.critical_mass_switch`), averaged over domains.
    """
    years, num_regions = levers.education.shape
    _, traj = simulate(params, initial, drivers, graph, make_forcing(years, num_regions, levers=levers), checkpoint=True)
    weights = discount ** jnp.arange(years)
    regions = traj.regions
    above = critical_mass_switch(params.natural(), jnp.log(regions.active[-1]))  # (R, K)
    return dict(
        development=jnp.sum(weights * jnp.mean(regions.development, axis=1)),
        patents=jnp.sum(weights * jnp.sum(traj.observations.patents, axis=1)),
        catchment=jnp.sum(weights * jnp.mean(regions.catchment_share, axis=1)),
        above_critical_mass=jnp.sum(jnp.mean(above, axis=-1)),
        inequality=jnp.std(jnp.log(regions.development[-1])),
    )


def _weighted(weights: tuple[tuple[str, float], ...], baseline: dict[str, jax.Array], parts: dict[str, jax.Array]) -> jax.Array:
    total = 0.0
    for name, weight in weights:
        sign = -1.0 if name == "inequality" else 1.0
        total = total + sign * weight * parts[name] / jnp.maximum(jnp.abs(baseline[name]), 1e-12)
    return total


def _draw_values(problem: PolicyProblem, spend: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The objective and raw parts under every parameter draw, `(S,)` each (S = 1 without draws)."""
    levers = lever_amounts(problem, spend)

    def one(params, initial, drivers, baseline):
        parts = objective_parts(params, initial, drivers, problem.graph, levers, problem.discount)
        return _weighted(problem.weights, baseline, parts), parts

    if problem.draws:
        return jax.vmap(one)(problem.params, problem.initial, problem.drivers, problem.baseline)
    return jax.tree_util.tree_map(lambda x: x[None], one(problem.params, problem.initial, problem.drivers, problem.baseline))


def objective(problem: PolicyProblem, spend: jax.Array) -> jax.Array:
    """The scalar objective of an allocation (to maximize): weighted parts relative to no policy;
    under parameter uncertainty its mean over the draws."""
    return jnp.mean(_draw_values(problem, spend)[0])


@eqx.filter_jit
def evaluate(problem: PolicyProblem, spend: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The objective and its raw parts for one allocation (one simulation per draw; the parts
    averaged over draws)."""
    values, parts = _draw_values(problem, spend)
    return jnp.mean(values), jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), parts)


@eqx.filter_jit
def draw_objectives(problem: PolicyProblem, spend: jax.Array) -> jax.Array:
    """The objective of one allocation under each parameter draw, `(S,)`."""
    return _draw_values(problem, spend)[0]


objectives = eqx.filter_jit(jax.vmap(objective, in_axes=(None, 0)))  # one objective per row of allocations


@eqx.filter_jit
def marginal_values(problem: PolicyProblem, spend: jax.Array) -> jax.Array:
    """d objective / d (one more unit of lever l in region r, every year), `(R, L)`."""

    def of_amounts(amounts):  # amounts (T, R, L) per year
        per_cell = amounts if problem.time_varying else jnp.sum(amounts, axis=0, keepdims=True)
        return objective(problem, per_cell * problem.costs)

    levers = lever_amounts(problem, spend)
    amounts = jnp.stack([getattr(levers, name) for name in problem.levers], axis=-1)
    return jnp.sum(jax.grad(of_amounts)(amounts), axis=0)


# --------------------------------------------------------------------------------------------
# The gradient method
# --------------------------------------------------------------------------------------------


@dataclass
class PolicyResult:
    spend: np.ndarray  # the best allocation found
    objective: float
    history: list[float]  # objective at every step (every evaluation for the baselines)
    evaluations: int  # simulator evaluations (a gradient step counts one: forward with its adjoint)
    seconds: float


class _AscentState(NamedTuple):
    spend: jax.Array
    opt_state: optax.OptState
    best: jax.Array
    best_value: float
    history: list[float]


@eqx.filter_jit
def _ascent_step(problem: PolicyProblem, optimizer: optax.GradientTransformation, spend, opt_state):
    """One step of mirror ascent; the value belongs to `spend`, before the step."""
    value, grad = jax.value_and_grad(objective, argnums=1)(problem, spend)
    span = jnp.max(grad) - jnp.min(grad)
    direction = grad / jnp.where(span > 0, span, jnp.inf)
    # the floor lets a cell emptied by a cap come back when its marginal value rises
    log_spend = jnp.log(jnp.maximum(spend, 1e-9 * problem.budget / spend.size))
    updates, opt_state = optimizer.update(-direction, opt_state, log_spend)
    shares = jax.nn.softmax(optax.apply_updates(log_spend, updates).ravel()).reshape(spend.shape)
    return value, feasible(problem, problem.budget * shares), opt_state


def optimize(problem: PolicyProblem, settings: OptimizeSettings, *, checkpoint_path: Path | None = None,
             phase: str = "optimize: mirror ascent") -> PolicyResult:
    """Mirror ascent on the budget simplex (exponentiated gradient) from the uniform allocation.

    A step multiplies each cell's spending by `exp(rate x g / (max g - min g))`, `g` the cells'
    marginal values (d objective / d spend), then rescales to the budget and projects onto the
    caps, if any. `rate` warms up, then decays by a cosine, from `settings.learning_rate`: the
    most one step changes the log-ratio of two cells' spending, whatever the objective's units.

    Why not Adam on the spending: a budget only moves between cells, so what counts is how the
    cells' marginal values compare, and Adam's per-cell normalization erases that comparison.
    Where more of every lever helps, each cell gets about the same step and the projection takes
    it back; on the default problem projected Adam learned only which lever does nothing. The
    multiplicative step keeps the comparison, makes relative changes (whatever the budget and
    the number of cells), and reaches the concentrated allocations that carry regions past their
    critical mass in a few dozen steps (measured: `benchmarks/policy_methods.md`).

    A checkpoint at `checkpoint_path` is resumed; `settings.stop_after`, Ctrl-C or
    `training.request_stop()` stop (checkpointed) early, raising `training.Interrupted`.
    """
    optimizer = sgd_with_warmup(settings.steps, float(settings.learning_rate))
    spend = uniform_allocation(problem)
    state = _AscentState(spend, strongly_typed(optimizer.init(spend)), spend, -np.inf, [])
    start = 0
    resumed = load_checkpoint(checkpoint_path, (state.spend, state.opt_state, state.best))
    if resumed is not None:
        (spend, opt_state, best), meta = resumed
        state, start = _AscentState(spend, opt_state, best, meta["best"], meta["history"]), meta["step"]

    def one_step(s: _AscentState) -> tuple[_AscentState, dict]:
        value, new_spend, new_opt_state = _ascent_step(problem, optimizer, s.spend, s.opt_state)
        value = float(value)
        s.history.append(value)
        best, best_value = (s.spend, value) if value > s.best_value else (s.best, s.best_value)
        figures = dict(objective=f"{value:.6g}", best=f"{best_value:.6g}")
        return _AscentState(new_spend, new_opt_state, best, best_value, s.history), figures

    def save(at: int, s: _AscentState) -> None:
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, (s.spend, s.opt_state, s.best), dict(step=at, history=s.history, best=s.best_value))

    progress = Progress(phase, settings.steps, enabled=settings.progress, initial=start)
    state, _ = run_steps(one_step, state, start=start, steps=settings.steps, save=save, progress=progress,
                         checkpoint_every=settings.checkpoint_every, stop_after=settings.stop_after,
                         checkpoint_path=checkpoint_path)
    best, best_value = state.best, state.best_value
    final_value = float(evaluate(problem, state.spend)[0])
    if final_value > best_value:
        best, best_value = state.spend, final_value
    progress.close(f"objective {best_value:.6g}")
    return PolicyResult(np.asarray(best), best_value, state.history, len(state.history) + 1, progress.seconds)
