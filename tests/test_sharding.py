"""Regions split over devices compute what one device computes: the simulation, the calibration
loss and its gradient, the policy objective and its gradient, and the command line; and NUTS
chains split over two CPU devices, which the command line makes, run the chains one device runs.
JAX fixes its devices when it starts, so each check runs in a fresh process (with four forced CPU
devices for the regions)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

FOUR_DEVICES = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4",
                "JAX_PLATFORMS": "cpu"}

CHECK = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from diffcomm.calibrate import calibration_prior
    from diffcomm.config import CalibrateConfig, DataConfig, FitConfig, PolicyConfig
    from diffcomm.data import load_dataset
    from diffcomm.effects import Estimate
    from diffcomm.loss import objective
    from diffcomm.params import Params
    from diffcomm.policy import PolicyProblem, evaluate, marginal_values, uniform_allocation
    from diffcomm.scenario import synthetic_regions
    from diffcomm.sharding import region_mesh, shard_regions
    from diffcomm.simulate import make_forcing, simulate

    assert len(jax.devices()) == 4
    mesh = region_mesh(4)

    def spread(x):  # on how many devices an output lies
        return len(x.sharding.device_set)

    # the simulation: 12 synthetic regions with cross-local ties, 3 per device
    params = Params.from_natural(2)
    sc = synthetic_regions(params, {"world_city": 4, "normal_region": 8}, key=jax.random.key(0), ties_per_region=3)
    inputs = (sc.initial, sc.drivers, sc.graph, make_forcing(8, sc.num_regions))
    _, one = simulate(params, *inputs)
    _, four = simulate(params, *shard_regions(inputs, mesh, sc.num_regions))
    assert spread(four.observations.patents) == 4
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(four)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-12)

    # the calibration loss and its gradient: 20 metros, region and national effects
    codes = ["10420", "10580", "10740", "12060", "12420", "12580", "14460", "16980", "19100", "19740", "26420",
             "31100", "33460", "35620", "37980", "41860", "41940", "42660", "47900", "00901"]
    config = CalibrateConfig(data=DataConfig(regions=codes), fit=FitConfig(region_effects=["attraction", "buzz_quality"]))
    data, prior = load_dataset(config.data), calibration_prior(config)
    estimate = Estimate.start(prior.centre, data.num_regions, len(data.years) - 1)
    estimate = jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), estimate)
    value_and_grad = jax.jit(jax.value_and_grad(objective))
    value, grad = value_and_grad(estimate, data, prior)
    sharded = shard_regions(data, mesh, data.num_regions)
    assert spread(sharded.patents) == 4
    value4, grad4 = value_and_grad(estimate, sharded, prior)
    np.testing.assert_allclose(float(value4), float(value), rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(grad4)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-9, atol=1e-12)

    # the policy objective and its gradient (the marginal value of each cell)
    problem = PolicyProblem.build(PolicyConfig(years=6, budget=30.0), params, sc.initial, sc.drivers, sc.graph)
    problem4 = shard_regions(problem, mesh, problem.num_regions)
    spend = uniform_allocation(problem)
    np.testing.assert_allclose(float(evaluate(problem4, spend)[0]), float(evaluate(problem, spend)[0]), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(marginal_values(problem4, spend)), np.asarray(marginal_values(problem, spend)),
                               rtol=1e-9, atol=1e-12)
    print("sharded equals single-device")

    # the command line: the same run on one device and on two; four do not divide 10 regions
    import logging, sys
    from hydra.core.global_hydra import GlobalHydra
    from diffcomm import cli

    def run(devices):
        GlobalHydra.instance().clear()
        code = cli.main(["simulate", "experiment=smoke", f"runtime.devices={devices}", f"hydra.run.dir={sys.argv[1]}/{devices}"])
        logging.getLogger().handlers.clear()
        return code

    print("exit codes", run(1), run(2), run(4))
""")


@pytest.mark.slow
def test_sharded_simulation_loss_gradient_policy_and_command_line_equal_one_device(tmp_path):
    done = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path)], env=FOUR_DEVICES, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sharded equals single-device" in done.stdout
    assert "exit codes 0 0 2" in done.stdout
    one, two = (pd.read_csv(tmp_path / name / "summary.csv") for name in ("1", "2"))
    pd.testing.assert_frame_equal(one, two, rtol=1e-6)
    assert ("diffcomm simulate: error: runtime.devices=4 must divide the number of regions, 10: each device holds as many; "
            "with the devices here, one of [1, 2]") in done.stderr.splitlines()
    assert not (tmp_path / "4" / "summary.json").exists()


CHAINS_CHECK = textwrap.dedent("""
    import logging, sys
    import numpy as np
    from hydra.core.global_hydra import GlobalHydra
    from diffcomm import cli

    regions = ("data.regions=[10420,10580,10740,12060,12420,12580,14460,16980,19100,19740,26420,31100,33460,35620,37980,"
               "41860,41940,42660,47900,'00901']")

    def run(devices):
        GlobalHydra.instance().clear()
        code = cli.main(["calibrate", regions, "fit.steps=25", "fit.restarts=2", "fit.polish_steps=0", "fit.progress=false",
                         "evaluation.draws=20", "inference=nuts", "nuts.chains=2", "nuts.warmup=20", "nuts.draws=10",
                         "nuts.block=10", "nuts.rank=2", "nuts.simulation_precision=float64", f"nuts.devices={devices}",
                         f"hydra.run.dir={sys.argv[1]}/{devices}"])
        logging.getLogger().handlers.clear()
        return code

    import jax
    traced = []  # the programs traced (the count as in tests/conftest.py's traced_programs)
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, *, fun_name="?", **kwargs: traced.append(fun_name)
        if event == "/jax/core/compile/jaxpr_trace_duration" else None)
    first = run(2)  # the first run makes the two CPU devices
    print("sampler programs on two devices", traced.count("block"))
    print("exit codes", first, run(1), run(4))  # four do not divide two chains

    import equinox as eqx, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    from pathlib import Path
    from jax.flatten_util import ravel_pytree
    from diffcomm.calibrate import load_calibration
    from diffcomm.config import NutsConfig
    from diffcomm.laplace import _layout
    from diffcomm.posterior import initial_chains
    from diffcomm.training import load_checkpoint

    free = eqx.partition(*(lambda c: (c.estimate, c.mask))(load_calibration(Path(sys.argv[1]) / "1")))[0]
    like = initial_chains(NutsConfig(chains=2, warmup=20, draws=10, block=10), jnp.zeros((2, ravel_pytree(free)[0].size)),
                          len(_layout(free)[0]))
    for devices in (1, 2):
        chains = load_checkpoint(Path(sys.argv[1]) / str(devices) / "checkpoint_nuts", like)[0]
        np.save(Path(sys.argv[1]) / f"records{devices}.npy", np.stack([chains.acceptance, chains.leapfrogs, chains.step]))
""")


@pytest.mark.slow
def test_nuts_chains_split_over_two_cpu_devices_sample_what_one_device_samples(tmp_path):
    pytest.importorskip("blackjax")
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}  # the command line makes the devices
    done = subprocess.run([sys.executable, "-c", CHAINS_CHECK, str(tmp_path)], env={**env, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exit codes 0 0 2" in done.stdout
    # one program for the warm-up's 2 blocks and the draws' 1 (one tree limit without metric windows):
    # the placement on the devices is the same before every block, so none is new to the cache
    assert "sampler programs on two devices 1" in done.stdout
    assert "posterior: the 2 chains split over 2 cpu devices" in (tmp_path / "2" / "calibrate.log").read_text()
    assert "split over" not in (tmp_path / "1" / "calibrate.log").read_text()
    one, two = (np.load(tmp_path / f"records{devices}.npy") for devices in (1, 2))  # acceptance, tree size, step
    # the same chains, computed in two places: the same keys, starts and density (its sums ordered
    # differently over two devices, within 1e-14); the early warm-up's long trees at large steps
    # then amplify that (1e-8 by its fifth transition, chains apart by its tenth), so the first four
    assert np.ptp(one[0, :, :4]) > 0.01 and np.ptp(one[1, :, :4]) > 0  # varied transitions, not a trivial match
    np.testing.assert_allclose(two[:, :, :4], one[:, :, :4], rtol=1e-6)
    assert ("diffcomm calibrate: error: nuts.devices must be 0 (as many as there are) or a count that divides "
            "nuts.chains (2), got 4") in done.stderr.splitlines()
