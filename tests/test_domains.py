"""The state x domain panel: its data set, drivers that vary by period, the balanced start, its
likelihood, and `diffcomm calibrate data=us_state_tech` end to end."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.stats import dirichlet_multinomial

from diffcomm import cli, domains
from diffcomm.calibrate import load_calibration
from diffcomm.calibrate_domains import check_panel
from diffcomm.config import CalibrateConfig, DataConfig, FitConfig, ModelConfig
from diffcomm.data import DataError
from diffcomm.data.panel import INVENTORS_PER_MEMBER, load_domain_dataset
from diffcomm.domains import PanelEstimate, expected
from diffcomm.errors import ConfigError
from diffcomm.evaluation import PANEL_LEVEL_HELD
from diffcomm.forecast import forecast_inventors
from diffcomm.observation import dirichlet_multinomial_nll
from diffcomm.params import Params
from diffcomm.simulate import make_forcing, simulate

PANEL = DataConfig(name="us_state_tech", domain_panel="us_state_tech/panel.csv", first_year=1988, last_year=2015)
HEADER = ("state,state_name,tech_group,tech_group_no,period_start,inventors,foreign_origin_inventor_pct,onshored_patents,"
          "state_patents,tech_group_patents\n")


@pytest.fixture(scope="module")
def panel():
    return load_domain_dataset(PANEL)


def test_each_later_period_is_read_at_its_middle_year(panel):
    assert panel.first_year == 1989 and panel.years[-1] == 2016  # 1988-1990 .. 2015-2017
    assert len(panel.domains) == 13 and panel.num_regions == 50
    for index, start in enumerate(panel.periods[1:]):
        assert panel.years[panel.observed_at[index] + 1] == start + 1  # observed_at indexes the years after year 0
    observed = panel.observed_inventors()
    assert np.nanmin(observed) >= 30 and np.isnan(observed).mean() > 0.3  # suppressed cells masked, never zero
    np.testing.assert_allclose(np.asarray(panel.initial_active).max() * INVENTORS_PER_MEMBER,
                               np.nanmax(pd.read_csv("src/diffcomm/datasets/us_state_tech/panel.csv")
                                         .query("period_start == 1988").inventors))


def test_drivers_change_between_periods_and_hold_within_one(panel):
    migrating, presence = np.asarray(panel.yearly.migrating), np.asarray(panel.yearly.mne_presence)
    assert migrating.shape == (panel.num_years, panel.num_regions, 13)
    year = {y: i for i, y in enumerate(panel.years[1:])}
    # the period 1991-1993 drives the years from its middle year on, 1992-1994; 1994-1996's from 1995
    np.testing.assert_array_equal(migrating[year[1992]], migrating[year[1994]])
    assert not np.allclose(migrating[year[1994]], migrating[year[1995]])
    assert not np.allclose(presence[year[1994]], presence[year[1995]])
    np.testing.assert_allclose(np.mean(presence), 1.0, atol=0.1)  # relative to the mean presence


def test_holding_out_periods_masks_them(panel):
    held = panel.through(2006)
    later = np.asarray(panel.periods[1:]) > 2006
    assert float(np.asarray(held.inventors_mask)[later].sum()) == 0.0 and float(np.asarray(held.domain_mask)[later].sum()) == 0
    np.testing.assert_array_equal(np.asarray(held.inventors_mask)[~later], np.asarray(panel.inventors_mask)[~later])


def test_a_bad_year_or_an_inconsistent_margin_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="data.first_year=1989: .* must be one of them"):
        load_domain_dataset(dataclasses.replace(PANEL, first_year=1989))
    bad = tmp_path / "panel.csv"
    bad.write_text(HEADER + "AK,Alaska,Transport,1,1991,41,33.3,0,350,6121\nAK,Alaska,Instruments,2,1991,50,30.0,0,351,900\n")
    with pytest.raises(DataError, match=r"panel.csv:3: column 'state_patents': expected one value per state and period"):
        load_domain_dataset(dataclasses.replace(PANEL, domain_panel=str(bad), first_year=1991, last_year=1994))


def test_drivers_in_the_forcing_replace_the_constant_ones(panel, x64):
    params = Params.from_natural(13)
    state, yearly = domains.initial_state(params, panel)
    constant = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x[0], (5, *x.shape[1:])), yearly)
    first = jax.tree_util.tree_map(lambda x: x[0], yearly)
    plain = simulate(params, state, first, panel.graph, make_forcing(5, panel.num_regions))[1]
    forced = simulate(params, state, panel.drivers, panel.graph, make_forcing(5, panel.num_regions, drivers=constant))[1]
    np.testing.assert_allclose(forced.regions.active, plain.regions.active, rtol=1e-12)
    moved = dataclasses.replace(constant, migrating=constant.migrating + 1.0)
    other = simulate(params, state, panel.drivers, panel.graph, make_forcing(5, panel.num_regions, drivers=moved))[1]
    assert np.all(np.asarray(other.regions.active[-1]) > np.asarray(plain.regions.active[-1]))  # more migrants, larger


def test_a_community_started_in_balance_stays_where_it_was(panel, x64):
    params = Params.from_natural(13)
    state, yearly = domains.initial_state(params, panel)
    held = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x[0], (2, *x.shape[1:])), yearly)
    traj = simulate(params, state, panel.drivers, panel.graph, make_forcing(2, panel.num_regions, drivers=held))[1]
    start = np.asarray(state.regions.active)
    below = start < 0.5 * float(params.natural().critical_mass[0])  # no growth of its own below the critical mass
    change = np.abs(np.asarray(traj.regions.active[0]) / start - 1)
    assert below.mean() > 0.9 and change[below].max() < 1e-3
    # a positive latent attraction raises the pull: the community grows from its start
    raised, yearly_raised = domains.initial_state(params, panel, jnp.ones((panel.num_regions, 13)))
    held = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x[0], (2, *x.shape[1:])), yearly_raised)
    grown = simulate(params, raised, panel.drivers, panel.graph, make_forcing(2, panel.num_regions, drivers=held))[1]
    assert np.all(np.asarray(grown.regions.active[1]) > start)


def test_dirichlet_multinomial_matches_scipy(x64):
    counts = np.array([[30.0, 5.0, 65.0], [1.0, 0.0, 9.0]])
    share = np.array([[0.3, 0.1, 0.6], [0.2, 0.2, 0.6]])
    ours = dirichlet_multinomial_nll(jnp.asarray(share), jnp.asarray(counts), jnp.asarray(50.0), jnp.array([1.0, 1.0]))
    theirs = -sum(dirichlet_multinomial.logpmf(c, 50.0 * s, c.sum()) for c, s in zip(counts, share))
    np.testing.assert_allclose(float(ours), theirs, rtol=1e-10)
    masked = dirichlet_multinomial_nll(jnp.asarray(share), jnp.asarray(counts), jnp.asarray(50.0), jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(float(masked), -dirichlet_multinomial.logpmf(counts[0], 50.0 * share[0], 100.0), rtol=1e-10)


def test_the_panel_needs_its_own_number_of_fields(panel):
    config = CalibrateConfig(model=ModelConfig(num_domains=3, x64=True), data=PANEL, fit=FitConfig(region_effects=[]))
    with pytest.raises(ConfigError, match="model.num_domains must be 13"):
        check_panel(panel, config)


@pytest.mark.slow
def test_calibrate_data_us_state_tech_end_to_end(tmp_path):
    """The command of the issue, cut short: one start, few steps, a short polish, one origin, few draws."""
    from hydra.core.global_hydra import GlobalHydra

    folder = tmp_path / "run"
    GlobalHydra.instance().clear()
    assert cli.main(["calibrate", "data=us_state_tech", "fit.restarts=1", "fit.steps=40", "fit.polish_steps=10",
                     "evaluation.origins=[2012]", "evaluation.draws=20", "fit.progress=false", f"hydra.run.dir={folder}"]) == 0
    GlobalHydra.instance().clear()
    params = pd.read_csv(folder / "params.csv")
    per_field = params[params.parameter.str.startswith("critical_mass[")]
    assert len(per_field) == 13 and per_field.domain.nunique() == 13  # each per-field row names its field
    assert params[params.parameter == "migrating_weight"].domain.isna().all()  # shared: empty
    assert {"inventors_dispersion", "domain_concentration"} <= set(params.parameter)
    evaluation = pd.read_csv(folder / "evaluation.csv")
    assert list(evaluation.method) == ["model", "persistence", "national drift", PANEL_LEVEL_HELD]
    assert (evaluation.cells > 300).all()
    assert evaluation[["male", "interval_90", "coverage_90"]].iloc[:3].notna().all().all()
    fit = pd.read_csv(folder / "fit.csv")
    assert len(fit) == 9 * 50 * 13 and fit.fitted.gt(0).all()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["domains"][0] == "Audiovisual Technologies" and "evaluation" in summary
    assert summary["polish_steps"] > 0 and summary["loss_per_observation"] <= min(summary["restart_losses"])
    for name in ("report.md", "fit.png", "communities.png", "evaluation.png", "loss.png", "effects.csv"):
        assert (folder / name).stat().st_size > 0, name
    with pytest.raises(ConfigError, match="state x domain panel"):  # forecast and optimize read metro runs
        load_calibration(folder)


def test_each_period_is_expected_from_the_counts_of_the_one_before(panel, x64):
    estimate = PanelEstimate.start(Params.from_natural(13), panel)
    base = np.asarray(expected(estimate, panel).inventors)
    doubled = eqx.tree_at(lambda d: d.inventors, panel, panel.inventors.at[3].multiply(2.0))
    moved = np.asarray(expected(estimate, doubled).inventors)
    np.testing.assert_allclose(moved[:4], base[:4], rtol=1e-12)  # the counts of period 3 do not move its own expectation
    seen = np.asarray(panel.inventors_mask[3]) > 0
    ratio = moved[4][seen] / base[4][seen]  # but the next period starts from them (and relaxes a little in 3 years)
    assert ratio.min() > 1.1 and np.median(ratio) > 1.5
    held = panel.through(panel.periods[3])  # later periods 3 on held out: the model runs free past period 2
    np.testing.assert_allclose(np.asarray(expected(estimate, eqx.tree_at(lambda d: d.inventors, held,
                                                                           held.inventors.at[3].multiply(2.0))).inventors),
                               np.asarray(expected(estimate, held).inventors), rtol=1e-12)


def test_a_forecast_does_not_read_drivers_after_its_origin(panel, x64):
    estimate = PanelEstimate.start(Params.from_natural(13), panel)
    origin, ahead = panel.period_index(2009), (panel.period_index(2012),)
    later = np.arange(panel.num_years) > panel.observed_at[origin]
    changed = eqx.tree_at(lambda d: d.yearly.migrating, panel,
                          panel.yearly.migrating + 2.0 * jnp.asarray(later, dtype=float)[:, None, None])
    np.testing.assert_allclose(np.asarray(forecast_inventors(estimate, changed, origin, ahead)),
                               np.asarray(forecast_inventors(estimate, panel, origin, ahead)), rtol=1e-12)
