"""Shared fixtures. x64 is on for the whole suite so that gradient checks are meaningful."""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import absl.logging  # noqa: E402  (imported by optax)
import pytest  # noqa: E402

# absl's log handler keeps the sys.stderr of its import, which under pytest is a capture
# stream; Hydra's logging set-up closes every handler, and absl's then closes that stream.
# Pointing it at the real stderr (which absl never closes) keeps pytest's capture intact.
absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def clean_argv(monkeypatch):
    """A clean command line and Hydra state for tests that call `diffcomm.cli.main`."""
    import logging

    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", ["diffcomm"])
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()
    logging.getLogger().handlers.clear()  # Hydra's job logging holds the test's captured stream
