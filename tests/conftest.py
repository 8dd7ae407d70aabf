"""Shared fixtures: a PRNG key, double precision where a test asks for it, small simulations and
synthetic calibration data, and a clean command line for the CLI tests; and how the test files
are shared out between the two worker processes.

Precision is not switched for the whole suite: the library's float32 path (the simulate default)
is what the tests without the `x64` fixture run.
"""

import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import absl.logging
import jax
import jax.numpy as jnp
import pytest

from diffcomm.data import Dataset
from diffcomm.effects import Estimate
from diffcomm.inputs import Drivers, Graph
from diffcomm.loss import expected_patents
from diffcomm.model import init_state
from diffcomm.observation import sample_counts
from diffcomm.simulate import make_forcing, simulate

# Most of the suite's time is XLA compiling small programs for the CPU, which then run briefly.
# The test session, and the processes it starts (they inherit the environment), compile with
# XLA's cheaper CPU code generation: the same programs, equal to the tests' tolerances, compiled
# in about half the time (the README's library examples: 32 s of compiling instead of 67 s).
# Users' runs keep XLA's defaults. XLA reads the flags when JAX starts its backend, which the
# imports above do not do; an XLA that does not know a flag ends the process, so the flags are
# tried in a process of their own first and left out where they fail.
FAST_COMPILE = ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=0",
                "--xla_llvm_disable_expensive_passes=true")


def _with_fast_compile(flags: str) -> str:
    if all(flag in flags for flag in FAST_COMPILE):  # set already (a worker inherits the controller's)
        return flags
    faster = " ".join([flags, *FAST_COMPILE]).strip()
    probe = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(2).sum().block_until_ready()"],
                           env={**os.environ, "XLA_FLAGS": faster, "JAX_PLATFORMS": "cpu"}, capture_output=True, timeout=300)
    return faster if probe.returncode == 0 else flags


os.environ["XLA_FLAGS"] = _with_fast_compile(os.environ.get("XLA_FLAGS", ""))

# absl's log handler keeps the sys.stderr of its import, which under pytest is a capture
# stream; Hydra's logging set-up closes every handler, and absl's then closes that stream.
# Pointing it at the real stderr (which absl never closes) keeps pytest's capture intact.
absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__


# -- sharing the files out between the workers (`-n 2 --dist loadfile`, pyproject.toml) -------------

SHARED_CALIBRATION = ("test_calibrate.py", "test_evaluation.py", "test_forecast.py", "test_posterior.py")
"""The files that read `fitted_small`: one worker runs them one after the other, so that the
calibration is fitted once in the session, not once in each worker."""

LONGEST_FIRST = ("test_cli.py", "shared calibration", "test_readme.py", "test_policy.py", "test_domains.py", "test_loss.py",
                 "test_simulate.py", "test_recovery.py", "test_sharding.py")
"""The work units that take longest (most of it compiling), longest first. Handed out first, they
leave the short files to fill in at the end, and the two workers finish about together (handed
out by the number of tests, as xdist does, the single-test subprocess files came last)."""


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` with the files of `SHARED_CALIBRATION` as one unit of work and the
    units of `LONGEST_FIRST` handed out first; any other `--dist` is xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    def rank(scope):
        name = scope if scope == "shared calibration" else Path(scope).name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid):
            path = super()._split_scope(nodeid)
            return "shared calibration" if Path(path).name in SHARED_CALIBRATION else path

        def _assign_work_unit(self, node):
            first = min(self.workqueue, key=rank)  # the first of equal rank: xdist's order among the rest
            self.workqueue.move_to_end(first, last=False)
            super()._assign_work_unit(node)

    return Scheduling(config, log)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def fresh_compiled_programs():
    """Drop JAX's compiled programs after each test module. The whole suite compiles hundreds of
    programs in one process; with all of them kept, a late compilation aborted inside XLA (at the
    recovery test, in the whole suite only, not when run alone; the cause is not pinned down)."""
    yield
    jax.clear_caches()


@pytest.fixture
def traced_programs():
    """`with traced_programs() as names:` the names of the programs JAX traces inside the block
    (each trace precedes a compilation). Counted from JAX's own record of its traces, so that a
    test can ask it of programs another test compiled, where wrapping a function to count its calls
    would compile it anew."""

    @contextlib.contextmanager
    def traced():
        names = []

        def listener(event, duration, *, fun_name="?", **kwargs):
            if event == "/jax/core/compile/jaxpr_trace_duration":
                names.append(fun_name)

        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            yield names
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)

    return traced


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Double precision for this test (gradient checks against finite differences need it)."""
    with jax.enable_x64(True):
        yield


def run_regions(params, drivers, *, years, active=5.0, graph=None, shock=None, levers=None, **init):
    """Simulate `years` years from a state with `active` members everywhere (or one value per region)."""
    num_regions, num_domains = drivers.specializing.shape
    graph = Graph.empty() if graph is None else graph
    active = jnp.broadcast_to(jnp.asarray(active, dtype=float).reshape(-1, 1) if jnp.ndim(active) else active,
                              (num_regions, num_domains))
    state = init_state(params, graph, active=active, **init)
    return simulate(params, state, drivers, graph, make_forcing(years, num_regions, shock=shock, levers=levers))


@pytest.fixture
def run():
    return run_regions


def synthetic_dataset(key, truth, *, num_regions=300, num_years=15, with_linkages=False) -> Dataset:
    """Regions with random drivers; patents (and linkages) drawn from the model with parameters `truth`."""
    R, T = num_regions, num_years
    ks = jax.random.split(key, 8)
    drivers = dataclasses.replace(
        Drivers.uniform(R, 1), connecting=jax.random.normal(ks[0], (R,)), educating=jax.random.normal(ks[1], (R,)),
        migrating=jax.random.normal(ks[2], (R,)), specializing=jax.random.normal(ks[3], (R, 1)))
    total = jnp.round(jnp.exp(5.0 + jax.random.normal(ks[7], (R,)))) if with_linkages else jnp.zeros(R)
    data = Dataset(
        drivers=drivers, graph=Graph.empty(), first_patents=jnp.round(jnp.exp(3.0 + jax.random.normal(ks[4], (R,)))),
        initial_active=jnp.exp(2.0 + 0.7 * jax.random.normal(ks[5], (R,))), initial_internationalization=jnp.full(R, 0.2),
        patents=jnp.zeros((T, R)), patents_mask=jnp.ones((T, R)), window=jnp.ones(T), nonlocal_count=jnp.round(0.3 * total),
        linkage_total=total, linkage_mask=jnp.full(R, float(with_linkages)),
        codes=tuple(f"{i:05d}" for i in range(R)), names=tuple(f"region {i}" for i in range(R)),
        years=tuple(range(2000, 2001 + T)), notes=(),
    )
    mean = expected_patents(Estimate.start(truth, R, T), data)[0]  # no latent effects: every region and year at the mean
    return dataclasses.replace(data, patents=sample_counts(ks[6], mean, truth.natural().patents_dispersion))


@pytest.fixture
def synthetic():
    return synthetic_dataset


@pytest.fixture(scope="session")
def fitted_small():
    """One small calibration shared by the tests that read one (30 regions, 2000-2006, four free
    parameters, the attraction effect and national year effects): `(data, config, calibration)`,
    in double precision."""
    from diffcomm.calibrate import calibrate
    from diffcomm.config import CalibrateConfig, EvaluationConfig, FitConfig
    from diffcomm.params import Params

    with jax.enable_x64(True):
        data = synthetic_dataset(jax.random.key(5), Params.from_natural(1, educating_weight=0.8), num_regions=30, num_years=6)
        config = CalibrateConfig(
            fit=FitConfig(free=["educating_weight", "inflow_bias", "attraction_scale", "national_shock_scale"],
                          region_effects=["attraction"], restarts=2, steps=60, polish_steps=200, progress=False),
            evaluation=EvaluationConfig(origins=[2003], draws=30))
        return data, config, calibrate(data, config)


@pytest.fixture
def clean_argv(monkeypatch):
    """A clean command line and Hydra state for tests that call `diffcomm.cli.main`."""
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", ["diffcomm"])
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()
    logging.getLogger().handlers.clear()  # Hydra's job logging holds the test's captured stream
