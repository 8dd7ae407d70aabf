"""Shared fixtures. x64 is on for the whole suite so that gradient checks are meaningful."""

import jax

jax.config.update("jax_enable_x64", True)

import pytest  # noqa: E402


@pytest.fixture
def key():
    return jax.random.key(0)
