"""The forecasts a calibrated model must beat, each fitted only on the years up to an origin.

- `persistence`: every region's last count, carried forward.
- `national_drift`: the last count times the pooled national growth (the log-linear slope of the
  national total of the regions observed in every history year).
- `log_linear_trend`: a least-squares line per region through log(1 + count), extended.
- `panel_regression`: the knowledge-production-function panel of the literature, a negative
  binomial regression with region fixed effects and covariate-specific trends,
  `log mu_rt = a_r + (g + x_r . beta) t`, the covariates `x_r` being the region's observed
  drivers (standardized).

Each gives a mean path; its predictive distribution is negative binomial around that mean, with
a dispersion per horizon fitted by maximum likelihood to the method's own errors at earlier
origins inside the history (pseudo-forecasts), so that an interval is as wide as the method's
past errors say, and no wider. All work on `history`, the (Y, R) counts of the first Y years
(NaN where not observed), and look at nothing later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .inputs import LATENT_DRIVERS, Drivers
from .observation import COUNT_DRAWS, count_quantiles, negative_binomial_logpmf

Method = Callable[[np.ndarray, int], np.ndarray]
"""(history (Y, R), horizon H) -> mean counts (H, R)."""

MIN_HISTORY = 3
"""Years of history a pseudo-forecast origin needs."""


def persistence(history: np.ndarray, horizon: int) -> np.ndarray:
    """The last observed count of each region, for every year ahead (NaN if none)."""
    last = _last_observed(history)
    return np.repeat(last[None], horizon, axis=0)


def national_growth(history: np.ndarray) -> float:
    """The log-linear slope of the national total, over the regions observed in every year."""
    complete = np.all(np.isfinite(history), axis=0)
    total = history[:, complete].sum(axis=1)
    years = np.arange(len(total))
    return float(np.polyfit(years, np.log(np.maximum(total, 1.0)), 1)[0])


def national_drift(history: np.ndarray, horizon: int) -> np.ndarray:
    """The last count times the pooled national growth, compounded over the years ahead."""
    growth = np.exp(national_growth(history) * np.arange(1, horizon + 1))
    return _last_observed(history)[None] * growth[:, None]


def log_linear_trend(history: np.ndarray, horizon: int) -> np.ndarray:
    """Each region's least-squares line through log(1 + count) over the years it was observed,
    extended `horizon` years (NaN for a region seen in fewer than two years)."""
    log_counts = np.log1p(history)
    seen = np.isfinite(log_counts)
    years = np.broadcast_to(np.arange(history.shape[0], dtype=float)[:, None], history.shape)
    count = seen.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_t = np.where(seen, years, 0).sum(axis=0) / count
        mean_y = np.where(seen, log_counts, 0).sum(axis=0) / count
        dt = np.where(seen, years - mean_t, 0)
        slope = (dt * np.where(seen, log_counts - mean_y, 0)).sum(axis=0) / (dt**2).sum(axis=0)
        ahead = np.arange(history.shape[0], history.shape[0] + horizon, dtype=float)[:, None]
        line = np.expm1(mean_y + slope * (ahead - mean_t))
    return np.where(count >= 2, np.maximum(line, 0.0), np.nan)


def covariates(drivers: Drivers) -> np.ndarray:
    """The observed drivers that vary across regions, standardized: (R, K), one column per
    scalar driver and per specialization domain (the latent drivers are left out)."""
    columns = []
    for field in dataclasses.fields(drivers):
        if field.name in LATENT_DRIVERS:
            continue
        values = np.asarray(getattr(drivers, field.name), dtype=float)
        columns.extend(values.reshape(values.shape[0], -1).T)
    x = np.stack(columns, axis=1)
    sd = x.std(axis=0)
    keep = sd > 1e-9
    return (x[:, keep] - x[:, keep].mean(axis=0)) / sd[keep]


def panel_regression(x: np.ndarray, steps: int = 300) -> Method:
    """The negative binomial panel with region fixed effects and covariate-specific trends on
    covariates `x` (R, K), as a `Method`: fitted with L-BFGS (optax) on each history it is given."""

    def method(history: np.ndarray, horizon: int) -> np.ndarray:
        counts = jnp.asarray(np.nan_to_num(history))
        mask = jnp.asarray(np.isfinite(history), dtype=counts.dtype)
        level = jnp.log(jnp.sum(counts * mask, 0) / jnp.maximum(jnp.sum(mask, 0), 1.0) + 0.5)
        start = dict(level=level, growth=jnp.zeros(()), beta=jnp.zeros(x.shape[1]), log_dispersion=jnp.log(10.0))
        fitted = _fit_panel(start, counts, mask, jnp.asarray(x, counts.dtype), steps)
        slope = np.asarray(fitted["growth"] + jnp.asarray(x) @ fitted["beta"])
        centre = (history.shape[0] - 1) / 2
        ahead = np.arange(history.shape[0], history.shape[0] + horizon) - centre
        return np.exp(np.asarray(fitted["level"])[None] + slope[None] * ahead[:, None])

    return method


def _panel_nll(theta, counts, mask, x):
    years = jnp.arange(counts.shape[0], dtype=counts.dtype) - (counts.shape[0] - 1) / 2
    log_mu = theta["level"][None] + (theta["growth"] + x @ theta["beta"])[None] * years[:, None]
    r = jnp.exp(theta["log_dispersion"])
    mu = jnp.exp(log_mu)
    ll = (jax.scipy.special.gammaln(counts + r) - jax.scipy.special.gammaln(r) + r * jnp.log(r / (r + mu))
          + counts * (log_mu - jnp.log(r + mu)))
    return -jnp.sum(mask * ll) / jnp.sum(mask)


@jax.jit(static_argnums=4)
def _fit_panel(start, counts, mask, x, steps):
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(_panel_nll)

    def step(carry, _):
        theta, state = carry
        value, grad = value_and_grad(theta, counts, mask, x, state=state)
        updates, state = solver.update(grad, state, theta, value=value, grad=grad, value_fn=_panel_nll,
                                       counts=counts, mask=mask, x=x)
        return (optax.apply_updates(theta, updates), state), None

    (theta, _), _ = jax.lax.scan(step, (start, solver.init(start)), None, length=steps)
    return theta


DISPERSION_GRID = np.exp(np.linspace(np.log(0.3), np.log(3000.0), 120))
"""The negative binomial dispersions a predictive distribution's is chosen among."""


def pseudo_dispersion(pseudo: Iterable[tuple[np.ndarray, np.ndarray]], horizon: int) -> np.ndarray | None:
    """The negative binomial dispersion r_h (H,) under which pseudo-forecasts are most likely.

    Each item of `pseudo` is one earlier origin's forecast and what followed it: the means
    (S, n, R) of S members mixed with equal weight (S = 1: a single mean path), and the observed
    counts (n, R), NaN where not observed, n <= `horizon` years ahead. Counts are negative binomial
    with dispersion r_h around each member h years ahead. Horizons no item reaches (with an
    observed count) keep the longest one reached. **Returns** None when none is reached.
    """
    loglik, reached = np.zeros((horizon, DISPERSION_GRID.size)), np.zeros(horizon, bool)
    for members, observed in pseudo:
        for h in range(observed.shape[0]):
            y = observed[h]
            weight = np.isfinite(y) & np.all(np.isfinite(members[:, h]), axis=0)
            if not weight.any():  # nothing observed this far ahead from this origin
                continue
            loglik[h] += np.asarray(_mixture_loglik(jnp.asarray(np.maximum(np.nan_to_num(members[:, h]), 1e-3)),
                                                    jnp.asarray(np.nan_to_num(y)), jnp.asarray(weight, float)))
            reached[h] = True
    if not reached.any():
        return None
    best = DISPERSION_GRID[np.argmax(loglik, axis=1)]
    for h in range(1, horizon):
        if not reached[h]:
            best[h] = best[h - 1]
    return best


@jax.jit
def _mixture_loglik(members, y, weight):
    """log of the equal mixture over members (S, N) of NB(y | member, r), summed over the cells
    with weight 1, for each r of `DISPERSION_GRID`."""
    def at(r):
        mixed = jax.scipy.special.logsumexp(negative_binomial_logpmf(members, y, r), axis=0) - jnp.log(members.shape[0])
        return jnp.sum(jnp.where(weight > 0, mixed, 0.0))

    return jax.lax.map(at, jnp.asarray(DISPERSION_GRID, members.dtype))


def horizon_dispersion(method: Method, history: np.ndarray, horizon: int) -> np.ndarray:
    """The negative binomial dispersion r_h (H,) that best explains the method's errors h years
    ahead from each earlier origin inside `history` with at least `MIN_HISTORY` years before it
    (`pseudo_dispersion`); the grid's widest where there is no such origin."""
    pseudo = ((method(history[:cut], n)[None], history[cut:cut + n])
              for cut in range(MIN_HISTORY, history.shape[0]) for n in [min(horizon, history.shape[0] - cut)])
    best = pseudo_dispersion(pseudo, horizon)
    return np.full(horizon, DISPERSION_GRID[0]) if best is None else best


def predictive_quantiles(mean: np.ndarray, dispersion: np.ndarray, probabilities, key: jax.Array,
                         draws: int = COUNT_DRAWS) -> dict[float, np.ndarray]:
    """Quantiles of negative binomial counts with mean `mean` (H, R) and dispersion per horizon
    (H,), from `draws` counts a cell (`observation.count_quantiles`); NaN where the mean is."""
    cells = count_quantiles(np.nan_to_num(mean, nan=1.0)[None], np.asarray(dispersion)[None, :, None], probabilities,
                            key, draws)[0]
    missing = ~np.isfinite(mean)
    return {p: np.where(missing, np.nan, q) for p, q in zip(probabilities, cells)}


def baseline_forecast(method: Method, history: np.ndarray, horizon: int, probabilities, key: jax.Array
                      ) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """A method's mean path (horizon, R) from `history` and the quantiles of its negative
    binomial predictive distribution, dispersion fitted to its own past errors (`horizon_dispersion`)."""
    mean = method(history, horizon)
    return mean, predictive_quantiles(mean, horizon_dispersion(method, history, horizon), probabilities, key)


def _last_observed(history: np.ndarray) -> np.ndarray:
    filled = np.where(np.isfinite(history), history, np.nan)
    last = np.full(history.shape[1], np.nan)
    for row in filled:
        last = np.where(np.isfinite(row), row, last)
    return last


def baselines(drivers: Drivers) -> dict[str, Method]:
    """The four baselines, by the name the tables use."""
    return {
        "persistence": persistence,
        "national drift": national_drift,
        "log-linear trend": log_linear_trend,
        "NB panel regression": panel_regression(covariates(drivers)),
    }
