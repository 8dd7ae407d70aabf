"""Policy optimization: feasibility, gradients, baselines, and what a budget should do."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from diffcomm import cli
from diffcomm.model import Params
from diffcomm.policy import (
    LEVERS,
    PolicyProblem,
    evaluate,
    evolution_strategy,
    make_objective,
    optimize,
    project,
    proportional_allocation,
    random_search,
    uniform_allocation,
)
from diffcomm.scenario import ARCHETYPES, synthetic_regions


def problem_for(budget=100.0, params=None, **changes):
    params = params or Params.from_natural(2)
    sc = synthetic_regions(params, {n: 2 for n in ARCHETYPES}, key=jax.random.key(0), ties_per_region=2)
    settings = dict(years=10, levers=LEVERS, costs=np.ones(len(LEVERS)), budget=budget, weights={"development": 1.0})
    settings.update(changes)
    return PolicyProblem(params, sc.initial, sc.drivers, sc.graph, **settings)


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


def test_optimized_allocation_beats_every_baseline_and_stays_feasible():
    problem = problem_for()
    result = optimize(problem, steps=60, progress=False)
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


def test_objective_gradient_matches_finite_differences():
    problem = problem_for(weights={"development": 1.0, "patents": 0.5, "catchment": 0.5, "inequality": 0.3,
                                   "above_critical_mass": 0.2})
    objective, _ = make_objective(problem)
    spend = project(jax.random.uniform(jax.random.key(3), problem.shape) * 5.0, problem.budget)
    grad = np.asarray(jax.grad(objective)(spend))
    h = 1e-5
    for index in [(0, 0, 0), (0, 3, 2), (0, 7, 5), (0, 9, 1)]:
        bump = jnp.zeros(problem.shape).at[index].set(h)
        fd = (objective(spend + bump) - objective(spend - bump)) / (2 * h)
        np.testing.assert_allclose(grad[index], fd, rtol=1e-5, atol=1e-10)


def test_a_lever_with_no_effect_receives_no_budget():
    # place-based policy acts through policy_weight (activation) and policy_renewal (connectedness);
    # with both at (near) zero and an objective of development only, it can do nothing
    params = Params.from_natural(2, policy_weight=0.0, policy_renewal=1e-12)
    problem = problem_for(params=params)
    result = optimize(problem, steps=60, progress=False)
    share = result.spend[..., LEVERS.index("place_policy")].sum() / problem.budget
    assert share < 1e-3, share
    uniform_share = 1 / len(LEVERS)
    assert share < uniform_share / 100  # it started with a sixth of the budget


def test_doubling_the_budget_does_not_lower_the_objective():
    small = optimize(problem_for(budget=60.0), steps=40, progress=False)
    large = optimize(problem_for(budget=120.0), steps=40, progress=False)
    assert large.objective >= small.objective


def test_interrupted_optimization_resumes_to_the_same_allocation(tmp_path):
    from diffcomm.calibrate import Interrupted

    problem = problem_for()
    whole = optimize(problem, steps=20, progress=False)
    ckpt = tmp_path / "checkpoint"
    with pytest.raises(Interrupted):
        optimize(problem, steps=20, checkpoint_path=ckpt, checkpoint_every=4, stop_after=9, progress=False)
    resumed = optimize(problem, steps=20, checkpoint_path=ckpt, progress=False)
    np.testing.assert_array_equal(resumed.spend, whole.spend)
    assert resumed.history == whole.history


def test_time_varying_allocation_and_caps():
    problem = problem_for(time_varying=True, cap=1.5, years=6)
    result = optimize(problem, steps=15, progress=False)
    assert result.spend.shape == (6, 10, len(LEVERS))
    assert result.spend.max() <= 1.5 + 1e-12
    np.testing.assert_allclose(result.spend.sum(), problem.budget, rtol=1e-12)


def test_problem_rejects_impossible_settings():
    with pytest.raises(ValueError, match="cannot hold the budget"):
        problem_for(cap=0.01)
    with pytest.raises(ValueError, match="region_cap 1.0 x 10 regions cannot hold"):
        problem_for(region_cap=1.0)
    with pytest.raises(ValueError, match="unknown objective part"):
        problem_for(weights={"happiness": 1.0})
    with pytest.raises(ValueError, match="levers must be"):
        problem_for(levers=("teleportation",), costs=np.ones(1))
    with pytest.raises(ValueError, match="costs must be"):
        problem_for(costs=-np.ones(len(LEVERS)))



@pytest.mark.slow
def test_optimize_command_writes_the_report(tmp_path, clean_argv):
    out = tmp_path / "opt"
    args = ["optimize", "optimize.steps=20", "optimize.progress=false", "scenario.counts.world_city=2",
            "scenario.counts.university_city=2", "scenario.counts.immigrant_gateway=2",
            "scenario.counts.specialized_cluster=2", "scenario.counts.normal_region=2", f"hydra.run.dir={out}"]
    assert cli.main(args) == 0
    comparison = pd.read_csv(out / "comparison.csv")
    assert list(comparison.columns) == ["method", "objective", "simulator_evaluations"]
    assert set(comparison.method) == {"gradient", "uniform", "proportional_to_size", "random_search", "evolution_strategy"}
    evaluations = comparison.set_index("method").simulator_evaluations
    assert evaluations.random_search == evaluations.gradient
    allocation = pd.read_csv(out / "allocation.csv")
    assert {"region", "lever", "year", "spend", "amount"} <= set(allocation.columns)
    np.testing.assert_allclose(allocation.spend.sum(), 200.0, rtol=1e-9)
    assert (allocation.spend >= 0).all()
    marginal = pd.read_csv(out / "marginal_value.csv", index_col=0)
    assert marginal.shape == (10, len(LEVERS))
    for name in ("allocation.png", "objective.png", "report.md", "objective_parts.csv"):
        assert (out / name).exists(), name
    assert json.loads((out / "summary.json").read_text())["spent"] == pytest.approx(200.0)
    assert cli.main([*args[:-1], "policy.budget=300", f"hydra.run.dir={out}"]) == 2  # another config's checkpoint


@pytest.mark.parametrize(
    "override, expected",
    [
        ("policy.budget=-5", "policy.budget must be a finite number >= 0"),
        ("policy.levers=[bribes]", "policy.levers must be names from"),
        ("+policy.objective.happiness=1", "policy.objective.happiness must be a part from"),
        ("source=run", "run must be an existing calibrated run folder"),
        ("policy.region_cap=0.001", "region_cap 0.001 x 20 regions cannot hold the budget"),
    ],
)
def test_bad_optimize_overrides(tmp_path, clean_argv, capsys, override, expected):
    out = tmp_path / "run"
    assert cli.main(["optimize", override, f"hydra.run.dir={out}"]) == 2
    assert not (out / "summary.json").exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
