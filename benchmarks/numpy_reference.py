"""The model's year step in plain NumPy: vectorized over regions, looped over years.

A yardstick for the JAX version: the same equations, the same order of updates and the same
algebra (log A and log G taken once a year and reused, one exponential per cross-local edge and
domain, local buzz as one exponential of a sum of logs, no `**`), so that both do the same
transcendental functions per region-year (`bench_simulate.py` counts them on both sides and
checks that both give the same numbers before timing them).
"""

from __future__ import annotations

import numpy as np


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _logit(x):
    return np.log(x / (1.0 - x))


def _leave(rate):
    return -np.expm1(-rate)


def _absorption(p, distance):
    x = np.maximum(distance, 0.0) / p["best_distance"]
    return x * np.exp(1.0 - x)


def simulate_numpy(p: dict, state: dict, drivers: dict, graph: dict, levers: dict | None, shock: np.ndarray) -> dict:
    """Simulate T years; returns observations, each (T, R).

    **Arguments:** natural parameters by name; state arrays (`active`, ... (R, K) and (R,), plus
    `international_members`, `frontier` (K,) and `ties` (E,)); drivers by name ((R,) or (R, K));
    graph `source`, `target`, `affinity`; levers by name, each (T, R), or None (no policy: the
    drivers as they are, as `model.step` takes them); shock (T, R).
    """
    s = {k: v.copy() for k, v in state.items()}
    src, tgt, aff = graph["source"], graph["target"], graph["affinity"]
    num_years, num_regions = shock.shape
    num_domains = s["active"].shape[1]
    out = {k: np.empty((num_years, num_regions), shock.dtype) for k in
           ("patents", "coinvention_share", "nonlocal_share", "exports_intensity", "development")}
    col = lambda x: x[:, None]  # noqa: E731
    mean_clockspeed = p["clockspeed"].mean()
    for t in range(num_years):
        xi = shock[t]
        if levers is None:
            educating, openness, middleground = drivers["educating"], drivers["openness"], drivers["middleground"]
            policy, connecting, phi = drivers["place_policy"], drivers["connecting"], drivers["spawning_share"]
        else:
            educating = drivers["educating"] + levers["education"][t]
            openness = drivers["openness"] + levers["openness"][t]
            middleground = drivers["middleground"] + levers["middleground"][t]
            policy = drivers["place_policy"] + levers["place_policy"][t]
            connecting = drivers["connecting"] + levers["connecting"][t]
            phi = drivers["spawning_share"] + (1.0 - drivers["spawning_share"]) * _leave(levers["spawning"][t])
        A, P, X, G, F = s["active"], s["passive"], s["overlap"], s["knowledge"], s["internationalization"]
        Y, D, S = s["development"], s["disconnection"], s["catchment_share"]

        log_A, log_G = np.log(A), np.log(G)

        # cross-local ties: W x exp(1 - x + log G_s), x = relu(log G_s - log G_r) / d*
        log_sender = log_G[src]
        x = np.maximum(log_sender - log_G[tgt], 0.0) / p["best_distance"]
        flow = s["ties"][:, None] * x * np.exp(1.0 - x + log_sender)
        from_ties = np.stack([np.bincount(tgt, flow[:, k], minlength=num_regions) for k in range(num_domains)], 1)
        from_ties = from_ties.astype(G.dtype)

        log_y = np.log(Y)
        amenities = drivers["amenities"] + p["development_amenity_weight"] * log_y
        log_inflow = col(
            p["inflow_bias"] + p["educating_weight"] * educating
            + p["migrating_weight"] * drivers["migrating"] * (1.0 + openness)
            + p["connecting_weight"] * connecting + p["amenity_weight"] * amenities
            + p["development_inflow_weight"] * log_y
        ) + p["specializing_weight"] * drivers["specializing"]
        inflow = np.exp(log_inflow) * col(1.0 - p["shock_on_migration"] * xi)
        act = p["activation_max"] * _sigmoid(
            col(p["activation_bias"] + p["middleground_weight"] * middleground + p["policy_weight"] * policy
                + p["anchor_weight"] * drivers["anchors"])
            + p["internationalization_activation_weight"] * F
        )
        leaving = _leave(act + p["passive_attrition"]) * P
        activation = leaving * act / (act + p["passive_attrition"])
        switch = _sigmoid(p["critical_mass_steepness"] * (log_A - np.log(p["critical_mass"])))
        grown = p["reproduction_rate"] * F * switch * A / (1.0 + A / p["carrying_capacity"])
        attrition = p["active_attrition"] * np.exp(-p["amenity_weight"] * amenities)
        A_new = A * np.exp(-col(attrition)) + activation + grown
        P_new = P - leaving + inflow

        new_overlap = p["overlap_rate"] * _sigmoid(
            col(p["overlap_bias"] + p["connecting_weight"] * connecting + p["middleground_overlap_weight"] * middleground)
            + p["international_pull_weight"] * np.log(s["international_members"] / p["international_base"])
        ) * col(1.0 - p["shock_on_fairs"] * xi)
        X_new = X * (1.0 - p["overlap_decay"]) + (1.0 - X) * new_overlap

        buzz = p["buzz_scale"] * np.exp(p["buzz_elasticity"] * log_A + p["buzz_specialization_weight"] * drivers["specializing"]
                                        + p["lock_in_exponent"] * np.log(col(openness) + X))
        pipeline = (_leave(p["pipeline_scale"] * X * A) * _absorption(p, np.log(s["frontier"]) - log_G) * G
                    + p["tie_scale"] * from_ties)
        G_new = G * (1.0 - p["ubiquitification"]) + buzz * (1.0 + p["complementarity"] * pipeline / (G + pipeline)) + pipeline

        F_new = F * (1.0 - p["export_decay"]) + p["export_rate"] * _sigmoid(
            p["export_bias"] + p["export_overlap_weight"] * X + p["export_community_weight"] * log_A
            + col(p["export_mne_weight"] * drivers["mne_presence"])
        ) * col(1.0 - p["shock_on_exports"] * xi)
        Y_new = (Y * (1.0 - p["development_decay"]) + p["development_decay"]
                 + p["development_export_gain"] * F.sum(1) + p["development_knowledge_gain"] * np.log1p(G.sum(1)))
        erosion = p["orchestration_erosion"] * drivers["mne_presence"] * (1.0 - phi) * F.mean(1)
        renewal = (p["spawning_renewal"] * drivers["mne_presence"] * phi * mean_clockspeed
                   + p["policy_renewal"] * np.logaddexp(0.0, policy))
        D_new = D * np.exp(-renewal) + (1.0 - D) * _leave(erosion)  # 1 - Lc, as the model stores it
        S_new = S + p["catchment_rate"] * ((1.0 - D_new) * p["catchment_ceiling"] - S)

        members = p["international_base"] + (X_new * A_new).sum(0)
        target = p["frontier_base"] + p["frontier_contribution"] * (X_new * A_new * G_new).sum(0) / members
        frontier = s["frontier"] + p["frontier_rate"] * (target - s["frontier"])
        mean_overlap = X_new.mean(1)
        formation = p["tie_formation"] * aff * mean_overlap[src] * mean_overlap[tgt]
        ties = s["ties"] * (1.0 - p["tie_decay"]) + (1.0 - s["ties"]) * formation

        s.update(active=A_new, passive=P_new, overlap=X_new, knowledge=G_new, internationalization=F_new,
                 development=Y_new, disconnection=D_new, catchment_share=S_new,
                 international_members=members, frontier=frontier, ties=ties)
        logit_overlap = _logit(mean_overlap)
        out["patents"][t] = np.exp(p["patents_intercept"] + p["patents_knowledge_elasticity"] * np.log(G_new.sum(1)))
        out["coinvention_share"][t] = _sigmoid(p["coinvention_intercept"] + p["coinvention_slope"] * logit_overlap)
        out["nonlocal_share"][t] = _sigmoid(p["nonlocal_intercept"] + p["nonlocal_connectedness_slope"] * _logit(D_new)
                                            + p["nonlocal_overlap_slope"] * logit_overlap)
        out["exports_intensity"][t] = F_new.mean(1)
        out["development"][t] = Y_new
    return out
