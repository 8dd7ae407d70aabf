"""Parameters: declared once, natural and unconstrained kept apart, checked on the way in."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffcomm.params import PARAMETERS, NaturalParams, Params, free_mask

K = 2


def test_params_round_trip_natural_values():
    params = Params.from_natural(K, educating_weight=1.7, critical_mass=[3.0, 8.0], overlap_decay=0.2)
    p = params.natural()
    assert isinstance(p, NaturalParams)
    np.testing.assert_allclose(p.educating_weight, 1.7, rtol=1e-6)
    np.testing.assert_allclose(p.critical_mass, [3.0, 8.0], rtol=1e-6)
    np.testing.assert_allclose(p.overlap_decay, 0.2, rtol=1e-6)
    assert p.critical_mass.shape == (K,) and p.reproduction_rate.shape == ()


def test_unconstrained_values_are_not_the_natural_ones():
    params = Params.from_natural(K, critical_mass=10.0, overlap_decay=0.2, educating_weight=-0.7)
    np.testing.assert_allclose(params.unconstrained["critical_mass"], 10.0 + np.log(-np.expm1(-10.0)), rtol=1e-6)
    np.testing.assert_allclose(params.unconstrained["overlap_decay"], np.log(0.2 / 0.8), rtol=1e-6)
    np.testing.assert_allclose(params.unconstrained["educating_weight"], -0.7, rtol=1e-6)  # real: the same
    with pytest.raises(AttributeError):
        params.critical_mass  # noqa: B018  a Params has no natural-scale attributes to mistake


def test_every_parameter_is_declared_once_with_its_meaning():
    described = Params.describe()
    assert list(described) == list(PARAMETERS) == [f for f in NaturalParams.__dataclass_fields__]
    assert all(meta["doc"] and meta["constraint"] in ("real", "positive", "unit") for meta in described.values())


def test_leaves_follow_the_declaration_order():
    params = Params.from_natural(K)
    leaves = jax.tree_util.tree_leaves(params)
    assert len(leaves) == len(PARAMETERS)
    for leaf, name in zip(leaves, PARAMETERS):
        assert leaf is params.unconstrained[name]


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(reproduction_rate=-1.0), "must be finite and > 0"),
        (dict(overlap_decay=1.5), "inside \\(0, 1\\)"),
        (dict(critical_mass=[1.0, 2.0, 3.0]), "length 2"),
        (dict(educatng_weight=1.0), "unknown parameter 'educatng_weight' \\(did you mean 'educating_weight'\\?\\)"),
        (dict(buzz_scale=float("nan")), "buzz_scale' must be finite"),
    ],
)
def test_params_reject_impossible_values(values, message):
    with pytest.raises(ValueError, match=message):
        Params.from_natural(K, **values)


def test_a_traced_value_is_checked_when_the_program_runs():
    build = eqx.filter_jit(lambda x: Params.from_natural(1, buzz_scale=x).natural().buzz_scale)
    np.testing.assert_allclose(build(jnp.asarray(0.4)), 0.4, rtol=1e-6)
    with pytest.raises(Exception, match="buzz_scale' must be finite and > 0"):
        build(jnp.asarray(-0.4))


def test_free_mask_selects_by_name():
    params = Params.from_natural(K)
    free, fixed = eqx.partition(params, free_mask(params, ["critical_mass", "educating_weight"]))
    assert [n for n, v in free.unconstrained.items() if v is not None] == ["educating_weight", "critical_mass"]
    assert fixed.unconstrained["critical_mass"] is None and fixed.unconstrained["buzz_scale"] is not None
    with pytest.raises(ValueError, match="unknown free parameter 'critcal_mass'"):
        free_mask(params, ["critcal_mass"])
