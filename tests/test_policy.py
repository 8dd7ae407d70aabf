"""Policy optimization: feasibility, gradients, baselines, and what a budget should do."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffcomm.comparison import compare_methods, evolution_strategy, held_out_comparison, random_search
from diffcomm.config import OBJECTIVE_PARTS, OptimizeConfig, OptimizeSettings, PolicyConfig
from diffcomm.errors import ConfigError
from diffcomm.inputs import LEVERS, Levers
from diffcomm.model import critical_mass_switch
from diffcomm.params import Params
from diffcomm.policy import (
    PolicyProblem,
    draw_objectives,
    evaluate,
    objective,
    objective_parts,
    optimize,
    project,
    proportional_allocation,
    uniform_allocation,
)
from diffcomm.scenario import ARCHETYPES, scenario_from_config, synthetic_regions
from diffcomm.simulate import make_forcing, simulate
from diffcomm.training import Interrupted

pytestmark = pytest.mark.usefixtures("x64")


def problem_for(budget=100.0, params=None, **changes):
    params = params or Params.from_natural(2)
    sc = synthetic_regions(params, {n: 2 for n in ARCHETYPES}, key=jax.random.key(0), ties_per_region=2)
    settings = dict(years=10, costs={name: 1.0 for name in LEVERS}, budget=budget, objective={"development": 1.0})
    settings.update(changes)
    return PolicyProblem.build(PolicyConfig(**settings), params, sc.initial, sc.drivers, sc.graph)


def steps(n, **changes):
    return OptimizeSettings(steps=n, progress=False, **changes)


@pytest.fixture(scope="module")
def default_problem():
    """`problem_for()`, built once for the tests that take it as it is (a problem is immutable):
    its no-policy baseline and the programs of its steps are compiled once."""
    with jax.enable_x64(True):
        return problem_for()


@pytest.mark.parametrize("cap", [None, 1.2])  # 105 cells x 1.2 >= 100
def test_projection_is_exactly_feasible(cap):
    y = jax.random.normal(jax.random.key(1), (3, 7, 5)) * 4.0
    x = project(y, 100.0, cap)
    assert float(jnp.min(x)) >= 0.0
    np.testing.assert_allclose(float(jnp.sum(x)), 100.0, rtol=1e-12)
    if cap is not None:
        assert float(jnp.max(x)) <= cap
    # a projection: a feasible point stays where it is
    np.testing.assert_allclose(project(x, 100.0, cap), x, atol=1e-9)


@pytest.mark.parametrize("cap", [None, 3.0])
def test_projection_with_region_caps_is_exactly_feasible_and_optimal(cap):
    y = jax.random.normal(jax.random.key(5), (2, 8, 4)) * 5.0
    y = y.at[:, 0].add(20.0)  # region 0 wants far more than its cap
    x = project(y, 100.0, cap, region_cap=15.0)
    assert float(jnp.min(x)) >= 0.0
    np.testing.assert_allclose(float(jnp.sum(x)), 100.0, rtol=1e-12)
    assert float(jnp.max(jnp.sum(x, axis=(0, 2)))) <= 15.0 * (1 + 1e-12)
    np.testing.assert_allclose(float(jnp.sum(x[:, 0])), 15.0, rtol=1e-9)  # the binding cap
    if cap is not None:
        assert float(jnp.max(x)) <= cap
    np.testing.assert_allclose(project(x, 100.0, cap, region_cap=15.0), x, atol=1e-8)  # idempotent
    # no feasible point is closer to y (checked against random feasible points)
    for k in range(20):
        z = project(jax.random.normal(jax.random.key(10 + k), y.shape) * 5.0, 100.0, cap, region_cap=15.0)
        assert float(jnp.sum((x - y) ** 2)) <= float(jnp.sum((z - y) ** 2)) + 1e-9


def test_optimized_allocation_beats_every_baseline_and_stays_feasible(default_problem):
    problem = default_problem
    result = optimize(problem, steps(60))
    spend = result.spend
    assert spend.min() >= 0.0
    np.testing.assert_allclose(spend.sum(), problem.budget, rtol=1e-12)
    size = np.asarray(problem.initial.regions.active).sum(-1)
    baselines = {
        "uniform": evaluate(problem, uniform_allocation(problem))[0],
        "proportional": evaluate(problem, proportional_allocation(problem, size))[0],
        "random": random_search(problem, result.evaluations, key=jax.random.key(1)).objective,
        "es": evolution_strategy(problem, result.evaluations, key=jax.random.key(2)).objective,
    }
    gradient_value = evaluate(problem, spend)[0]
    for name, value in baselines.items():
        assert gradient_value >= value, (name, gradient_value, value)


@pytest.mark.slow  # about 20 s: 150 steps and two baselines of 150 simulations each
def test_on_the_default_problem_the_gradient_method_reaches_the_best_baseline():
    """`diffcomm optimize` with its defaults: the gradient method against the baselines that
    `compare_methods` gives as many simulator evaluations (`benchmarks/policy_methods.md`)."""
    cfg = OptimizeConfig()
    params = Params.from_natural(cfg.model.num_domains, **cfg.model.params)
    regions, _ = scenario_from_config(params, cfg.scenario)
    problem = PolicyProblem.build(cfg.policy, params, regions.initial, regions.drivers, regions.graph)
    result = optimize(problem, dataclasses.replace(cfg.optimize, progress=False))
    size = np.asarray(regions.initial.regions.active).sum(-1)
    methods = compare_methods(problem, result, size, seed=cfg.optimize.seed)
    values = {name: float(evaluate(problem, spend)[0]) for name, (spend, _) in methods.items()}
    for name in ("random_search", "evolution_strategy"):  # the ES rounds down to an even number
        assert methods[name][1] >= result.evaluations - 1
    best_baseline = max(value for name, value in values.items() if name != "gradient")
    assert values["gradient"] >= best_baseline, values


def test_objective_gradient_matches_finite_differences():
    problem = problem_for(objective={"development": 1.0, "patents": 0.5, "catchment": 0.5, "inequality": 0.3,
                                     "above_critical_mass": 0.2})
    spend = project(jax.random.uniform(jax.random.key(3), problem.shape) * 5.0, problem.budget)
    value = jax.jit(objective)
    grad = np.asarray(jax.grad(objective, argnums=1)(problem, spend))
    h = 1e-5
    for index in [(0, 0, 0), (0, 3, 2), (0, 7, 5), (0, 9, 1)]:
        bump = jnp.zeros(problem.shape).at[index].set(h)
        fd = (value(problem, spend + bump) - value(problem, spend - bump)) / (2 * h)
        np.testing.assert_allclose(grad[index], fd, rtol=1e-5, atol=1e-10)


def test_a_lever_with_no_effect_receives_no_budget():
    # place-based policy acts through policy_weight (activation) and policy_renewal (connectedness);
    # with both at (near) zero and an objective of development only, it can do nothing
    params = Params.from_natural(2, policy_weight=0.0, policy_renewal=1e-12)
    problem = problem_for(params=params)
    result = optimize(problem, steps(60))
    share = result.spend[..., LEVERS.index("place_policy")].sum() / problem.budget
    assert share < 1e-3, share
    uniform_share = 1 / len(LEVERS)
    assert share < uniform_share / 100  # it started with a sixth of the budget


def test_doubling_the_budget_does_not_lower_the_objective():
    small = optimize(problem_for(budget=60.0), steps(40))
    large = optimize(problem_for(budget=120.0), steps(40))
    assert large.objective >= small.objective


def test_interrupted_optimization_resumes_to_the_same_allocation(default_problem, tmp_path):
    problem = default_problem  # and the steps of the first test: its compiled step serves
    whole = optimize(problem, steps(60))
    ckpt = tmp_path / "checkpoint"
    with pytest.raises(Interrupted):
        optimize(problem, steps(60, checkpoint_every=4, stop_after=9), checkpoint_path=ckpt)
    resumed = optimize(problem, steps(60), checkpoint_path=ckpt)
    np.testing.assert_array_equal(resumed.spend, whole.spend)
    assert resumed.history == whole.history


def test_time_varying_allocation_and_caps():
    problem = problem_for(time_varying=True, cap=1.5, years=6)
    result = optimize(problem, steps(15))
    assert result.spend.shape == (6, 10, len(LEVERS))
    assert result.spend.max() <= 1.5 + 1e-12
    np.testing.assert_allclose(result.spend.sum(), problem.budget, rtol=1e-12)


def test_problem_rejects_impossible_settings():
    with pytest.raises(ConfigError, match="policy.cap 0.01 x 60 cells cannot hold the budget"):
        problem_for(cap=0.01)
    with pytest.raises(ConfigError, match="policy.region_cap 1.0 x 10 regions cannot hold"):
        problem_for(region_cap=1.0)
    with pytest.raises(ValueError, match="policy.objective.happiness must be a part"):
        problem_for(objective={"happiness": 1.0})
    with pytest.raises(ValueError, match="policy.levers must be names from"):
        problem_for(levers=["teleportation"])
    with pytest.raises(ValueError, match="policy.costs.education must be a positive unit cost"):
        problem_for(costs={"education": -1.0})


def test_the_critical_mass_part_uses_the_models_own_switch():
    """`above_critical_mass` is the model's switch per domain (its steepness, its thresholds)."""
    def part_and_expected(params):
        problem = problem_for(params=params)
        zero = Levers.zeros((problem.years, problem.num_regions))
        parts = objective_parts(params, problem.initial, problem.drivers, problem.graph, zero, problem.discount)
        forcing = make_forcing(problem.years, problem.num_regions)
        _, traj = simulate(params, problem.initial, problem.drivers, problem.graph, forcing)
        switch = critical_mass_switch(params.natural(), jnp.log(traj.regions.active[-1]))  # (R, K)
        return float(parts["above_critical_mass"]), float(jnp.sum(jnp.mean(switch, axis=-1)))

    soft, expected = part_and_expected(Params.from_natural(2, critical_mass=[8.0, 30.0], critical_mass_steepness=2.5))
    np.testing.assert_allclose(soft, expected, rtol=1e-10)
    sharp, _ = part_and_expected(Params.from_natural(2, critical_mass=[8.0, 30.0], critical_mass_steepness=8.0))
    assert abs(sharp - soft) > 1e-2  # changing the model's steepness changes the objective


def test_the_parts_computed_are_the_parts_a_config_may_weight(default_problem):
    problem = default_problem
    value, parts = evaluate(problem, uniform_allocation(problem))
    assert set(parts) == set(OBJECTIVE_PARTS)
    np.testing.assert_allclose(value, objective(problem, uniform_allocation(problem)), rtol=1e-12)


def problem_under_draws(values, **changes):
    """A problem under parameter draws (educating_weight and critical_mass per draw, the same
    regions), and the problem of each draw on its own."""
    draws = [Params.from_natural(2, educating_weight=w, critical_mass=m) for w, m in values]
    sc = synthetic_regions(draws[0], {n: 2 for n in ARCHETYPES}, key=jax.random.key(0), ties_per_region=2)
    settings = PolicyConfig(years=10, costs={name: 1.0 for name in LEVERS}, budget=100.0,
                            objective={"development": 1.0, "above_critical_mass": 0.5}, **changes)
    stack = lambda trees: jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)  # noqa: E731
    together = PolicyProblem.build(settings, stack(draws), stack([sc.initial] * len(draws)), stack([sc.drivers] * len(draws)),
                                   sc.graph, draws=len(draws))
    alone = [PolicyProblem.build(settings, p, sc.initial, sc.drivers, sc.graph) for p in draws]
    return together, alone


@pytest.fixture(scope="module")
def three_draws():
    """`problem_under_draws` of three draws, built once for the two tests that read it."""
    with jax.enable_x64(True):
        return problem_under_draws([(0.3, 1.0), (1.2, 3.0), (0.7, 8.0)])


def test_under_draws_the_objective_is_the_mean_of_each_draws_own_objective(three_draws):
    """Each draw is judged against its own no-policy baseline; the objective and its gradient are
    the mean over draws, one vmap."""
    together, alone = three_draws
    value, gradient = eqx.filter_jit(objective), eqx.filter_jit(jax.grad(objective, argnums=1))  # one program each
    spend = project(jax.random.uniform(jax.random.key(4), together.shape) * 5.0, together.budget)
    each = np.array([float(value(p, spend)) for p in alone])
    assert np.ptp(each) > 1e-3  # the draws disagree
    np.testing.assert_allclose(draw_objectives(together, spend), each, rtol=1e-10)
    np.testing.assert_allclose(value(together, spend), each.mean(), rtol=1e-10)
    np.testing.assert_allclose(gradient(together, spend), np.mean([gradient(p, spend) for p in alone], axis=0),
                               rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(evaluate(together, spend)[1]["development"],
                               np.mean([evaluate(p, spend)[1]["development"] for p in alone]), rtol=1e-10)


def test_the_robust_allocation_is_judged_on_draws_it_was_not_chosen_on(three_draws):
    together, alone = three_draws
    holdout, _ = problem_under_draws([(0.5, 2.0), (0.9, 5.0), (1.1, 1.5), (0.2, 6.0)])
    robust = optimize(together, steps(30)).spend
    at_estimate = optimize(alone[0], steps(30)).spend
    rows, values = held_out_comparison(holdout, alone[0], {"robust": robust, "estimate_optimal": at_estimate})
    assert [row["allocation"] for row in rows] == ["robust", "estimate_optimal"]
    np.testing.assert_allclose(values["no_policy"], 1.5)  # each draw's own baseline: 1 + 0.5 x 1
    for row, spend in zip(rows, (robust, at_estimate)):
        v = np.asarray(draw_objectives(holdout, spend))
        np.testing.assert_allclose(values[row["allocation"]], v)
        assert row["mean"] == pytest.approx(v.mean()) and row["q05"] <= row["mean"] <= row["q95"]
        assert row["p_beats_uniform"] == pytest.approx(np.mean(v > values["uniform"]))
        assert row["p_beats_no_policy"] == pytest.approx(np.mean(v > 1.5))
        assert row["at_estimate"] == pytest.approx(float(evaluate(alone[0], spend)[0]))
    # the robust allocation does better on average over the draws it was chosen on
    assert float(evaluate(together, robust)[0]) > float(evaluate(together, at_estimate)[0])
