"""Config groups compose; the CLI runs end to end, sweeps, and refuses bad overrides in one line."""

import json
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir

from diffcomm import cli
from diffcomm.config import SCHEMAS, build_forcing, build_params, build_scenario, conf_dir, to_typed



pytestmark = pytest.mark.usefixtures("clean_argv")


def group_options(command: str):
    for group in ("model", "scenario", "experiment"):
        for path in sorted((conf_dir() / group).glob("*.yaml")):
            yield command, f"{group}={path.stem}"


@pytest.mark.parametrize("command, override", list(group_options("simulate")))
def test_every_config_group_option_composes_and_builds(command, override):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name=command, overrides=[override])
    typed = to_typed(cfg, SCHEMAS[command])
    params = build_params(typed.model)
    if override.startswith("scenario=") and override != "scenario=archetypes":
        return  # building 1000 regions adds nothing over the check above
    scenario = build_scenario(params, typed.scenario)
    forcing = build_forcing(typed.scenario, scenario)
    assert forcing.shock.shape == (typed.scenario.years, scenario.num_regions)


def run_cli(*args):
    return cli.main(["simulate", *args])


def test_simulate_writes_every_output(tmp_path):
    out = tmp_path / "run"
    assert run_cli("experiment=smoke", f"hydra.run.dir={out}") == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("trajectories.csv", "trajectories.npz", "summary.csv", "trajectories.png"):
        assert (out / name).stat().st_size > 0, name
    assert summary["regions"] == 10 and summary["years"] == 5
    frame = pd.read_csv(out / "trajectories.csv")
    assert list(frame.columns) == ["region", "archetype", "year", "variable", "domain", "value"]
    assert set(frame.year) == set(range(1, 6))
    assert {"patents", "active", "local_connectedness", "nonlocal_share"} <= set(frame.variable)
    assert not frame.duplicated(["region", "year", "variable", "domain"]).any()
    arrays = np.load(out / "trajectories.npz")
    assert arrays["active"].shape == (5, 10, 3) and arrays["patents"].shape == (5, 10)
    patents = frame[(frame.variable == "patents") & (frame.year == 5)].set_index("region").value
    np.testing.assert_allclose(patents.loc[list(arrays["region"])], arrays["patents"][-1], rtol=1e-6)


def test_lever_and_mne_overrides_change_the_outcome(tmp_path):
    def last_connectedness(*overrides):
        out = tmp_path / "_".join(overrides).replace("=", "-")
        assert run_cli("experiment=smoke", "scenario.years=15", *overrides, f"hydra.run.dir={out}") == 0
        table = pd.read_csv(out / "summary.csv")
        return table.local_connectedness_last.mean(), table.active_last.mean()

    orchestrate, _ = last_connectedness("scenario.mne.spawning_share=0.1")
    spawn, _ = last_connectedness("scenario.mne.spawning_share=0.9")
    assert spawn > orchestrate
    _, without = last_connectedness("scenario.levers.middleground=0")
    _, with_middleground = last_connectedness("scenario.levers.middleground=2")
    assert with_middleground > without


@pytest.mark.slow
def test_multirun_sweeps_shock_intensity(tmp_path):
    sweep = tmp_path / "sweep"
    code = run_cli(
        "-m", "experiment=smoke", "scenario.shock.start=2", "scenario.shock.intensity=0,0.5,1", f"hydra.sweep.dir={sweep}"
    )
    assert code == 0
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(runs) == 3
    by_intensity = {}
    for run in runs:
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        intensity = float(next(o for o in overrides if o.startswith("scenario.shock.intensity=")).split("=")[1])
        by_intensity[intensity] = pd.read_csv(run / "summary.csv").exports_intensity_last.mean()
    assert sorted(by_intensity) == [0.0, 0.5, 1.0]
    assert by_intensity[0.0] > by_intensity[0.5] > by_intensity[1.0]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("scenario.nope=1", "no such key"),
        ("scenario.counts.world_city=-3", "scenario.counts.world_city must be a non-negative count"),
        ("scenario.shock.intensity=1.5", "scenario.shock.intensity must be a share in [0, 1]"),
        ("scenario.mne.spawning_share=-0.2", "scenario.mne.spawning_share"),
        ("scenario.years=abc", "scenario.years"),
        ("model=missing", "model/missing"),
        ("+model.params.reproduction_rate=-1", "reproduction_rate' must be > 0"),
        ("scenario.shock.intensity=0,2", "must be a share in [0, 1], got 2.0"),
    ],
)
def test_bad_override_ends_in_one_clear_line(tmp_path, capsys, override, expected):
    out = tmp_path / "run"
    code = run_cli("-m" if "," in override else "experiment=smoke", override, f"hydra.run.dir={out}")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


def test_unknown_command(capsys):
    assert cli.main(["simulat"]) == 2
    assert "unknown command" in capsys.readouterr().err
