"""The command line: `diffcomm <command> [hydra overrides]`.

Each command is a Hydra app whose config is `conf/<command>.yaml`. Before Hydra runs, the
overrides are composed and validated once per sweep combination, so a bad override ends in one
line on stderr and exit code 2 rather than a traceback or a half-finished sweep.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Callable

from .config import SCHEMAS, ConfigError, conf_dir, to_typed

USAGE = """usage: diffcomm <command> [-m] [key=value ...]

commands:
  simulate   simulate a scenario of synthetic regions and write trajectories, summary, figures
  calibrate  fit the model to observed patents and linkages (default: US metros 2000-2010)
  forecast   forecast patents from a calibrated run: run=<folder> years=2011-2015
  optimize   allocate a budget of policy levers by gradient ascent through the model

Overrides follow Hydra's syntax, e.g.
  diffcomm simulate scenario.years=30 scenario.levers.middleground=1
  diffcomm simulate -m scenario.shock.intensity=0,0.5,1
  diffcomm simulate experiment=disruption
  diffcomm calibrate fit.restarts=8
  diffcomm forecast run=outputs/calibrate/<time> years=2011-2015
  diffcomm optimize policy=patents policy.budget=500
"""

MAX_CHECKED_COMBINATIONS = 256


def _fail(command: str, message: str) -> int:
    print(f"diffcomm {command}: error: {message}", file=sys.stderr)
    return 2


def _sweep_combinations(overrides: list[str]) -> list[list[str]]:
    """Expand comma sweeps into the list of single-valued override lists Hydra will run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for text, override in zip(overrides, parsed):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([text])
    combos = itertools.islice(itertools.product(*choices), MAX_CHECKED_COMBINATIONS)
    return [list(c) for c in combos]


def check_overrides(command: str, overrides: list[str]) -> None:
    """Compose and validate the config for every sweep combination; raise `ConfigError`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    try:
        combos = _sweep_combinations(overrides)
    except Exception as error:  # Hydra's parser raises several types; all mean a malformed override
        raise ConfigError(_first_line(error)) from None
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        for combo in combos:
            try:
                cfg = compose(config_name=command, overrides=combo)
            except Exception as error:  # composition errors: unknown key, missing group option, bad type
                raise ConfigError(_composition_message(error)) from None
            to_typed(cfg, SCHEMAS[command])
    GlobalHydra.instance().clear()


def _composition_message(error: Exception) -> str:
    message = _first_line(error)
    cause = error.__cause__
    if cause is not None and "not in struct" in str(cause):
        message = f"{message.rstrip('.')}: no such key ({_first_line(cause)})"
        if "model.params." in message:
            message += "; set a model parameter with +model.params.NAME=VALUE"
    return message


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _hydra_app(command: str, task: Callable) -> Callable:
    import hydra

    return hydra.main(config_path=str(conf_dir()), config_name=command, version_base="1.3")(task)


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


# --------------------------------------------------------------------------------------------
# tasks: typed config at the door, the work in commands.py
# --------------------------------------------------------------------------------------------


def _task(command: str) -> Callable:
    def task(cfg) -> None:
        from . import commands
        from .data import DataError

        import logging

        logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # its backend probe is noise in run logs
        typed = _typed_or_exit(command, cfg)
        work = {"simulate": commands.run_simulate, "calibrate": commands.run_calibrate, "forecast": commands.run_forecast,
                "optimize": commands.run_optimize}
        try:
            work[command](typed, _output_dir(), plain_config=_plain(cfg))
        except (ConfigError, DataError, FloatingPointError) as error:
            raise SystemExit(_fail(command, str(error)))

    return task


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


def _typed_or_exit(command: str, cfg):
    try:
        return to_typed(cfg, SCHEMAS[command])
    except ConfigError as error:
        raise SystemExit(_fail(command, str(error)))


TASKS: dict[str, Callable] = {name: _task(name) for name in ("simulate", "calibrate", "forecast", "optimize")}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `diffcomm` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in TASKS:
        return _fail(command, f"unknown command; expected one of {sorted(TASKS)}")
    overrides = [a for a in rest if not a.startswith("-")]
    # other Hydra flags (--cfg job, --info, -cn ...) take values and print or redirect: Hydra checks those
    plain_run = all(a in ("-m", "--multirun") for a in rest if a.startswith("-"))
    if plain_run:
        try:
            check_overrides(command, overrides)
        except ConfigError as error:
            return _fail(command, str(error))
    sys.argv = [f"diffcomm {command}", *rest]
    try:
        _hydra_app(command, TASKS[command])()
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
