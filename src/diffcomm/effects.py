"""Latent region and year effects: what the data do not observe, estimated with the parameters.

Regions differ in things no covariate measures, and grant volumes move nationally from year to
year. Both enter as latent effects with a fitted scale, written non-centred: each standardized
effect `z` is N(0, 1) a priori and the effect is `scale * z`, so that the posterior has no funnel
where a scale is small. See ``docs/model.md`` (section "Region and national effects").

- `attraction` (R,): the pull of a region on new members that the observed drivers miss
  (openness to an influx of people, the part of amenities and of the four driving forces the
  covariates do not measure; B&C §4, §5 i-ii). Added to `Drivers.attraction`, a log-offset of
  the inflow of new members, at scale `attraction_scale`.
- `buzz_quality` (R,): how much knowledge a region's community makes per member, beyond what
  size, specialization and openness explain: leaders and anchor firms (B&C §5 iv; the anchor
  tenant hypothesis; L,M&S Table 4, Seattle's patents with and without Amazon, Boeing and
  Microsoft) and a middleground that carries knowledge between members (B&C §5 v). Added to
  `Drivers.buzz_quality`, a log-offset of local buzz, at scale `buzz_quality_scale`.
- `year` (T,): innovations of the national effect on log patents, for the T years after the
  data's first, `eta_t = mu t + zeta_t` with `zeta_t = phi zeta_{t-1} + sigma eps_t`
  (a trend with AR(1) deviations; phi near 1 is a random walk with drift). `eta_0 = 0`: the
  first year, whose counts set the initial state, is the reference.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .inputs import LATENT_DRIVERS, Drivers
from .params import NaturalParams, Params

REGION_EFFECTS = LATENT_DRIVERS
"""The latent region effects: each a field of `Effects` and of `Drivers`, with a scale parameter
`<name>_scale`."""


class Effects(eqx.Module):
    """Standardized latent effects (each entry N(0, 1) a priori): per region and per year."""

    attraction: Float[Array, " r"]
    buzz_quality: Float[Array, " r"]
    year: Float[Array, " t"]  # innovations eps_t of the national effect, t = 1..T

    @classmethod
    def zeros(cls, num_regions: int, num_years: int) -> Effects:
        """No effects: every region and year at the mean."""
        return cls(jnp.zeros(num_regions), jnp.zeros(num_regions), jnp.zeros(num_years))


class Estimate(eqx.Module):
    """What a calibration estimates: the model's parameters and the latent effects."""

    params: Params
    effects: Effects

    @classmethod
    def start(cls, params: Params, num_regions: int, num_years: int) -> Estimate:
        return cls(params, Effects.zeros(num_regions, num_years))


def with_region_effects(p: NaturalParams, drivers: Drivers, effects: Effects) -> Drivers:
    """The drivers (leading axis R) with each region's latent effects added at their scales."""
    return dataclasses.replace(
        drivers,
        attraction=drivers.attraction + p.attraction_scale * effects.attraction,
        buzz_quality=drivers.buzz_quality + p.buzz_quality_scale * effects.buzz_quality,
    )


def region_effect_scales(p: NaturalParams, names: tuple[str, ...] = REGION_EFFECTS) -> Float[Array, " e"]:
    """The fitted scale `<name>_scale` of each named region effect."""
    return jnp.stack([getattr(p, f"{name}_scale") for name in names])


def national_effects(p: NaturalParams, innovations: Float[Array, " t"]) -> Float[Array, " t"]:
    """eta_1 .. eta_T on log patents from the innovations eps_1 .. eps_T (eta_0 = 0).

    A forecast beyond the fitted years passes the fitted innovations followed by fresh N(0, 1)
    draws (or zeros for the central path).
    """

    def one_year(deviation, eps):
        deviation = p.national_persistence * deviation + p.national_shock_scale * eps
        return deviation, deviation

    _, deviations = jax.lax.scan(one_year, jnp.zeros((), innovations.dtype), innovations)
    years = jnp.arange(1, innovations.shape[0] + 1, dtype=innovations.dtype)
    return p.national_drift * years + deviations


def national_innovations(p: NaturalParams, effects: Float[Array, " t"]) -> Float[Array, " t"]:
    """The inverse of `national_effects`: the innovations eps_1 .. eps_T of the effects eta_1 ..
    eta_T, eps_t = (zeta_t - phi zeta_{t-1}) / sigma with zeta_t = eta_t - mu t and zeta_0 = 0."""
    years = jnp.arange(1, effects.shape[0] + 1, dtype=effects.dtype)
    deviations = effects - p.national_drift * years
    previous = jnp.concatenate([jnp.zeros(1, effects.dtype), deviations[:-1]])
    return (deviations - p.national_persistence * previous) / p.national_shock_scale


def standard_normal_prior(effects: Effects) -> Float[Array, ""]:
    """-log N(z | 0, 1) summed over every standardized effect (constants dropped)."""
    return sum(0.5 * jnp.sum(z**2) for z in jax.tree_util.tree_leaves(effects))
