"""The model's parameters: declared once, read on their natural scale, optimised unconstrained.

Every parameter is a field of :class:`NaturalParams` with its constraint (real, positive or in
(0, 1)), its default and its meaning. The mechanisms of ``model.py`` read a ``NaturalParams``.
What an optimiser moves is a :class:`Params`: the same parameters, each mapped to the real line
(softplus⁻¹ for positive ones, logit for shares), under ``Params.unconstrained[name]``. The two
types never mix: ``params.natural()`` is the only way from one to the other.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import OrderedDict

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

REAL, POSITIVE, UNIT = "real", "positive", "unit"


def parameter(constraint: str, default: float, doc: str, *, per_domain: bool = False):
    """A field of `NaturalParams`: its constraint, default (natural scale) and meaning."""
    return eqx.field(metadata=dict(constraint=constraint, default=default, doc=doc, per_domain=per_domain))


class NaturalParams(eqx.Module):
    """Every parameter of the model on its natural scale, as the mechanisms read them.

    Scalars have shape ``()``; per-domain parameters (marked in ``docs/model.md``) have shape
    ``(K,)``. Symbols refer to ``docs/model.md``. Build one with ``Params.from_natural(...).natural()``.
    """

    # -- inflow of new members: the four driving forces (B&C section 4) --------------------
    inflow_bias: Float[Array, ""] = parameter(REAL, -0.5, "b_in: log inflow of a region at mean drivers")
    connecting_weight: Float[Array, ""] = parameter(REAL, 0.5, "w_c: driver weight of connecting")
    educating_weight: Float[Array, ""] = parameter(REAL, 0.5, "w_e: driver weight of educating/training")
    migrating_weight: Float[Array, ""] = parameter(REAL, 0.5, "w_m: driver weight of migrating (scaled by 1+openness)")
    specializing_weight: Float[Array, ""] = parameter(REAL, 0.5, "w_s: driver weight of clustering/specializing")
    amenity_weight: Float[Array, ""] = parameter(REAL, 0.3, "w_q: amenities raise inflow and cut attrition")
    development_inflow_weight: Float[Array, ""] = parameter(REAL, 0.3, "w_Y: regional development feeds inflow")
    development_amenity_weight: Float[Array, ""] = parameter(REAL, 0.3, "development feeds amenities")
    attraction_scale: Float[Array, ""] = parameter(POSITIVE, 0.5, "sigma_u: sd over regions of the latent attraction "
                                                                  "(log inflow)")
    # -- activation P -> A: middleground, place-based policy, anchors (B&C section 5) ------
    activation_max: Float[Array, ""] = parameter(UNIT, 0.3, "a-bar: largest yearly activation rate")
    activation_bias: Float[Array, ""] = parameter(REAL, -1.5, "b_a: activation logit at mean conditions")
    middleground_weight: Float[Array, ""] = parameter(REAL, 0.8, "w_g: middleground raises activation")
    policy_weight: Float[Array, ""] = parameter(REAL, 0.5, "w_p: place-based policy raises activation")
    anchor_weight: Float[Array, ""] = parameter(REAL, 0.5, "w_l: leaders and anchor firms raise activation")
    internationalization_activation_weight: Float[Array, ""] = parameter(REAL, 0.5, "w_F: internationalization raises activation")
    # -- reproduction, critical mass, attrition ---------------------------------------------
    reproduction_rate: Float[Array, ""] = parameter(POSITIVE, 0.2, "rho: self-sustaining feedback per unit of F")
    critical_mass_steepness: Float[Array, ""] = parameter(POSITIVE, 4.0, "h: sharpness of the critical-mass switch")
    critical_mass: Float[Array, "k"] = parameter(POSITIVE, 10.0, "A*: critical mass of active members", per_domain=True)
    carrying_capacity: Float[Array, "k"] = parameter(POSITIVE, 30.0, "A_cap: size at which reproduction halves", per_domain=True)
    active_attrition: Float[Array, ""] = parameter(POSITIVE, 0.1, "delta_A: attrition rate of active members")
    passive_attrition: Float[Array, ""] = parameter(POSITIVE, 0.1, "delta_P: attrition rate of passive members")
    # -- local-international overlap (B&C sections 2, 5) ------------------------------------
    overlap_rate: Float[Array, ""] = parameter(UNIT, 0.2, "lambda_X: largest yearly share of non-overlap that joins")
    overlap_bias: Float[Array, ""] = parameter(REAL, -2.0, "b_X: overlap-formation logit at mean drivers")
    middleground_overlap_weight: Float[Array, ""] = parameter(REAL, 0.5, "w_gX: middleground merges local and global buzz")
    international_pull_weight: Float[Array, ""] = parameter(REAL, 0.3, "w_N: a growing international community draws "
                                                                       "overlap (log N/N0)")
    overlap_decay: Float[Array, ""] = parameter(UNIT, 0.05, "delta_X: yearly loss of overlap")
    # -- disruption shocks (L,M&S) -----------------------------------------------------------
    shock_on_migration: Float[Array, ""] = parameter(UNIT, 0.8, "tau_m: share of inflow a full shock stops")
    shock_on_fairs: Float[Array, ""] = parameter(UNIT, 0.8, "tau_f: share of new overlap a full shock stops")
    shock_on_exports: Float[Array, ""] = parameter(UNIT, 0.6, "tau_F: share of new internationalization a full shock stops")
    # -- localized learning (M&M) ------------------------------------------------------------
    best_distance: Float[Array, ""] = parameter(POSITIVE, 1.0, "d*: cognitive distance of largest absorption")
    buzz_scale: Float[Array, ""] = parameter(POSITIVE, 0.3, "beta_b: productivity of local buzz")
    buzz_quality_scale: Float[Array, ""] = parameter(POSITIVE, 1.0, "sigma_b: sd over regions of the latent buzz quality "
                                                                    "(log buzz)")
    buzz_elasticity: Float[Array, ""] = parameter(UNIT, 0.5, "alpha: buzz is concave in active members")
    buzz_specialization_weight: Float[Array, ""] = parameter(REAL, 0.3, "w_sb: buzz rises with specialization")
    lock_in_exponent: Float[Array, ""] = parameter(POSITIVE, 0.5, "nu: low openness and overlap damp learning")
    pipeline_scale: Float[Array, ""] = parameter(POSITIVE, 0.01, "beta_p: learning from the international frontier")
    tie_scale: Float[Array, ""] = parameter(POSITIVE, 0.02, "beta_W: learning through cross-local ties")
    complementarity: Float[Array, ""] = parameter(POSITIVE, 1.0, "eta: pipelines make buzz more productive")
    ubiquitification: Float[Array, ""] = parameter(UNIT, 0.1, "delta_G: knowledge decays toward the ubiquitous")
    # -- internationalization ----------------------------------------------------------------
    export_rate: Float[Array, ""] = parameter(POSITIVE, 0.2, "lambda_F: largest yearly gain of internationalization")
    export_bias: Float[Array, ""] = parameter(REAL, -1.0, "b_F: internationalization logit at mean conditions")
    export_overlap_weight: Float[Array, ""] = parameter(REAL, 2.0, "w_XF: overlap drives internationalization")
    export_community_weight: Float[Array, ""] = parameter(REAL, 0.3, "w_AF: community size drives internationalization")
    export_mne_weight: Float[Array, ""] = parameter(REAL, 0.5, "w_M: MNE presence drives internationalization")
    export_decay: Float[Array, ""] = parameter(UNIT, 0.2, "delta_F: yearly decay of internationalization")
    # -- regional development ----------------------------------------------------------------
    development_export_gain: Float[Array, ""] = parameter(POSITIVE, 0.02, "gamma_F: development from internationalization")
    development_knowledge_gain: Float[Array, ""] = parameter(POSITIVE, 0.01, "gamma_G: development from knowledge")
    development_decay: Float[Array, ""] = parameter(UNIT, 0.1, "delta_Y: pull of development back to 1")
    # -- MNE strategy and local connectedness (L,M&S) ---------------------------------------
    orchestration_erosion: Float[Array, ""] = parameter(POSITIVE, 0.15, "omega_o: global orchestration erodes Lc")
    spawning_renewal: Float[Array, ""] = parameter(POSITIVE, 0.1, "omega_s: local spawning renews Lc")
    policy_renewal: Float[Array, ""] = parameter(POSITIVE, 0.02, "omega_p: place-based policy renews Lc")
    clockspeed: Float[Array, "k"] = parameter(POSITIVE, 1.0, "kappa: industry clockspeed (Lc renewal uses its mean over "
                                                             "domains)", per_domain=True)
    catchment_rate: Float[Array, ""] = parameter(UNIT, 0.2, "lambda_S: speed at which the catchment share follows Lc")
    catchment_ceiling: Float[Array, ""] = parameter(UNIT, 0.5, "S-bar: catchment share at full connectedness")
    # -- international communities and cross-local ties ------------------------------------
    international_base: Float[Array, "k"] = parameter(POSITIVE, 100.0, "N0: members abroad outside the modelled regions",
                                                      per_domain=True)
    frontier_base: Float[Array, "k"] = parameter(POSITIVE, 40.0, "I0: frontier knowledge made outside the modelled regions",
                                                 per_domain=True)
    frontier_contribution: Float[Array, ""] = parameter(UNIT, 0.5, "b_I: weight of overlapping members' knowledge in the "
                                                                   "frontier")
    frontier_rate: Float[Array, ""] = parameter(UNIT, 0.1, "delta_I: speed at which the frontier moves")
    tie_formation: Float[Array, ""] = parameter(UNIT, 0.1, "lambda_W: tie formation at full overlap and affinity")
    tie_decay: Float[Array, ""] = parameter(UNIT, 0.1, "delta_W: yearly decay of ties")
    # -- observation model (MODEL section 4) ---------------------------------------------------
    patents_intercept: Float[Array, ""] = parameter(REAL, 0.0, "theta_0: log patents at unit knowledge")
    patents_knowledge_elasticity: Float[Array, ""] = parameter(REAL, 1.0, "theta_G: elasticity of patents to knowledge")
    patents_dispersion: Float[Array, ""] = parameter(POSITIVE, 5.0, "negative binomial size (larger: closer to Poisson)")
    national_drift: Float[Array, ""] = parameter(REAL, 0.0, "mu_eta: national trend of log patents per year")
    national_shock_scale: Float[Array, ""] = parameter(POSITIVE, 0.05, "sigma_eta: sd of the yearly national shock to "
                                                                       "log patents")
    national_persistence: Float[Array, ""] = parameter(UNIT, 0.5, "phi_eta: persistence of national shocks (near 1: "
                                                                  "a random walk)")
    coinvention_intercept: Float[Array, ""] = parameter(REAL, -2.0, "theta_i0: logit share of patents with a foreign co-inventor")
    coinvention_slope: Float[Array, ""] = parameter(REAL, 0.5, "theta_i1: response of that share to logit overlap")
    nonlocal_intercept: Float[Array, ""] = parameter(REAL, 0.0, "theta_n0: logit non-local connection share")
    nonlocal_connectedness_slope: Float[Array, ""] = parameter(REAL, 1.0, "theta_n1: response to logit (1 - Lc)")
    nonlocal_overlap_slope: Float[Array, ""] = parameter(REAL, 0.5, "theta_n2: response to logit overlap")
    nonlocal_tie_slope: Float[Array, ""] = parameter(REAL, 0.0, "theta_n3: response to log(1 + the strength of the "
                                                                "region's cross-local ties)")
    nonlocal_concentration: Float[Array, ""] = parameter(POSITIVE, 20.0, "beta-binomial concentration of connection counts")

    @property
    def num_domains(self) -> int:
        return jnp.shape(self.critical_mass)[-1]


PARAMETERS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(NaturalParams)}
"""Name -> field of every parameter, in declaration order."""


def to_natural(constraint: str, unconstrained: Array) -> Array:
    if constraint == POSITIVE:
        return jax.nn.softplus(unconstrained)
    if constraint == UNIT:
        return jax.nn.sigmoid(unconstrained)
    return unconstrained


def to_unconstrained(constraint: str, value: Array) -> Array:
    if constraint == POSITIVE:
        return value + jnp.log(-jnp.expm1(-value))  # inverse softplus
    if constraint == UNIT:
        return jnp.log(value) - jnp.log1p(-value)  # logit
    return value


def check_natural(num_domains: int, values: dict) -> None:
    """Raise `ValueError` naming the first value that is unknown, of the wrong shape, or outside
    its constraint (finite; > 0 for positive parameters; inside (0, 1) for shares)."""
    if not isinstance(num_domains, int) or num_domains < 1:
        raise ValueError(f"num_domains must be a positive int, got {num_domains!r}")
    unknown_names(values, "parameter")
    for name, value in values.items():
        meta = PARAMETERS[name].metadata
        try:
            concrete = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"parameter {name!r} must be a number, got {value!r}") from None
        if not _allowed(np, meta["constraint"], concrete):
            raise ValueError(f"parameter {name!r} must be {_EXPECTED[meta['constraint']]}, got {value!r}")
        allowed = [(), (num_domains,)] if meta["per_domain"] else [()]
        if concrete.shape not in allowed:
            size = f"a scalar or have length {num_domains}" if meta["per_domain"] else "a scalar"
            raise ValueError(f"parameter {name!r} must be {size}, got shape {concrete.shape}")


def unknown_names(names, what: str) -> None:
    """Raise `ValueError` for names that are not parameters, with the closest known name."""
    unknown = [name for name in names if name not in PARAMETERS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], PARAMETERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown {what} {unknown[0]!r}{hint}; Params.describe() and docs/model.md list them all")


_EXPECTED = {REAL: "finite", POSITIVE: "finite and > 0", UNIT: "strictly inside (0, 1)"}


def _allowed(xp, constraint: str, value):
    ok = xp.isfinite(value)
    if constraint == POSITIVE:
        ok = ok & (value > 0)
    elif constraint == UNIT:
        ok = ok & (value > 0) & (value < 1)
    return xp.all(ok)


def _is_traced(value) -> bool:
    try:
        np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return True
    return False


class Params(eqx.Module):
    """The model's parameters as an optimiser moves them: every value on its unconstrained scale.

    `unconstrained[name]` holds, for each field of `NaturalParams` and in the same order,
    the value mapped to the real line. Use `natural()` to read the values a user means and
    `from_natural` to build from them.

    ```python
    params = Params.from_natural(3, educating_weight=1.0, critical_mass=[10.0, 20.0, 5.0])
    params.natural().critical_mass  # Array([10., 20., 5.])
    ```
    """

    # An OrderedDict flattens in insertion order (a dict would be sorted by name), so leaves follow
    # the declaration order of NaturalParams in restarts, checkpoints and the Laplace approximation.
    unconstrained: OrderedDict[str, Array]

    def __check_init__(self):
        if list(self.unconstrained) != list(PARAMETERS):
            raise ValueError("Params.unconstrained must hold every parameter of NaturalParams, in its order")
        domain_shapes = {jnp.shape(self.unconstrained[n]) for n, f in PARAMETERS.items() if f.metadata["per_domain"]}
        if len(domain_shapes) != 1 or len(next(iter(domain_shapes))) != 1:
            raise ValueError(f"per-domain parameters must all have one shape (K,), got {domain_shapes}")
        for name, f in PARAMETERS.items():
            if not f.metadata["per_domain"] and jnp.shape(self.unconstrained[name]) != ():
                raise ValueError(f"parameter {name!r} must be a scalar, got shape {jnp.shape(self.unconstrained[name])}")

    @property
    def num_domains(self) -> int:
        return jnp.shape(self.unconstrained["critical_mass"])[-1]

    @property
    def dtype(self):
        """The precision the model runs in with these parameters (that of their values)."""
        return jnp.result_type(*self.unconstrained.values())

    @classmethod
    def from_natural(cls, num_domains: int, **values) -> Params:
        """Build parameters from natural-scale values; unnamed ones take their defaults.

        **Arguments:**

        - `num_domains`: K, the number of industry or technology domains.
        - `values`: natural-scale values by name; per-domain ones may be a scalar or length K.

        **Returns:** a `Params`. Raises `ValueError` naming a value that breaks its constraint.
        """
        traced = {name: value for name, value in values.items() if _is_traced(value)}
        check_natural(num_domains, {name: v for name, v in values.items() if name not in traced})
        unconstrained = OrderedDict()
        for name, f in PARAMETERS.items():
            constraint = f.metadata["constraint"]
            value = jnp.asarray(values.get(name, f.metadata["default"]), dtype=float)
            if name in traced:  # a value built inside jit is checked when the program runs
                message = f"parameter {name!r} must be {_EXPECTED[constraint]}"
                value = eqx.error_if(value, ~_allowed(jnp, constraint, value), message)
            if f.metadata["per_domain"] and value.ndim == 0:
                value = jnp.full((num_domains,), value)
            unconstrained[name] = to_unconstrained(constraint, value)
        return cls(unconstrained)

    def natural(self) -> NaturalParams:
        """The parameters on their natural (constrained) scale."""
        return NaturalParams(**{n: to_natural(f.metadata["constraint"], self.unconstrained[n]) for n, f in PARAMETERS.items()})

    @staticmethod
    def describe() -> dict[str, dict]:
        """Name -> constraint, default, per-domain flag and meaning, for docs and reports."""
        return {name: dict(f.metadata) for name, f in PARAMETERS.items()}


def free_mask(params: Params, free: list[str] | tuple[str, ...]) -> Params:
    """A filter spec for `eqx.partition`: True for the named parameters, False for the others."""
    unknown_names(free, "free parameter")
    # tree_at rebuilds the module without __init__, whose shape checks do not apply to a mask
    return eqx.tree_at(lambda p: p.unconstrained, params, OrderedDict((name, name in free) for name in PARAMETERS))
