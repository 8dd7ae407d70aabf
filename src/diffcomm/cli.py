"""The command line: `diffcomm <command> [hydra overrides]`, the only place Hydra is used.

Each command is a Hydra app whose config is `conf/<command>.yaml` on top of its typed schema
(`config.SCHEMAS`). Before Hydra runs, the overrides are composed and checked once per sweep
combination, so a bad override ends in one line on stderr and exit code 2 rather than a
traceback or a half-finished sweep. The work then runs in a worker thread, with double precision
switched on for that run only if its config asks; Ctrl-C asks the work to checkpoint and stop,
and the command ends within seconds either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import signal
import sys
import threading
import typing
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import hydra
import jax
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from jax.experimental.compilation_cache import compilation_cache as cache
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from . import apps
from .config import SCHEMAS
from .errors import ConfigError, DataError
from .report.sweep import FAILED_FILE, SWEEP_FILE, finished_run, write_sweep_table
from .sharding import chain_devices, provide_cpu_devices, usable_cores
from .training import Interrupted, clear_stop, request_stop

COMMANDS = {
    "simulate": "simulate a scenario of synthetic regions and write trajectories, summary, figures",
    "calibrate": "fit the model to observed patents and linkages (default: US metros 2000-2010)",
    "forecast": "forecast patents from a calibrated run: run=<folder> years=2011-2015",
    "optimize": "allocate a budget of policy levers by gradient ascent through the model",
}
GROUPS = {"simulate": ("model", "scenario", "experiment"), "calibrate": ("model", "data", "optimizer"),
          "forecast": (), "optimize": ("model", "scenario", "policy")}
EXAMPLES = {
    "simulate": ["diffcomm simulate scenario.years=30 scenario.levers.middleground=1",
                 "diffcomm simulate experiment=disruption",
                 "diffcomm simulate -m scenario.shock.intensity=0,0.5,1",
                 "diffcomm simulate run=outputs/calibrate/<time> ensemble.draws=200 scenario.years=10 "
                 "'ensemble.scenarios=[{},{middleground:1}]'"],
    "calibrate": ["diffcomm calibrate fit.restarts=8 fit.steps=2000",
                  "diffcomm calibrate \"data.regions=[41860,41940,'00901']\" evaluation.rolling_origin=true",
                  "diffcomm calibrate optimizer=lbfgs hydra.run.dir=outputs/my_run"],
    "forecast": ["diffcomm forecast run=outputs/calibrate/<time> years=2011-2015",
                 "diffcomm forecast run=outputs/calibrate/<time> years=2006-2010 level=0.5"],
    "optimize": ["diffcomm optimize policy=patents policy.budget=500",
                 "diffcomm optimize policy.time_varying=true policy.region_cap=20",
                 "diffcomm optimize source=run run=outputs/calibrate/<time> policy=catchment"],
}
GRACE_SECONDS = 5.0  # after Ctrl-C, how long the work may take to checkpoint before the process ends
MAX_CHECKED_COMBINATIONS = 256


def conf_dir() -> Path:
    """The folder of Hydra configs: packaged with a wheel, or `conf/` at the repository root."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


def _register_schemas() -> None:
    for command, schema in SCHEMAS.items():
        ConfigStore.instance().store(name=f"{command}_schema", node=schema)


def compose(command: str, overrides: list[str] = ()) -> DictConfig:
    """The composed config of `command` with `overrides`, as Hydra would give it to the command."""
    _register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=command, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def to_typed(cfg: DictConfig, command: str) -> Any:
    """The typed, checked config of `command` (a dataclass of `config.py`); `ConfigError` if not."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SCHEMAS[command]), cfg))
    except MissingMandatoryValue as error:
        key = _first_line(error).rsplit(" ", 1)[-1]
        raise ConfigError(f"{key} is required: `diffcomm {command} --help` says what it takes") from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        first = _first_line(error)
        raise ConfigError(f"{key}: {first}" if key and key not in first else first) from None


def check_overrides(command: str, overrides: list[str]) -> None:
    """Compose and check the config of every sweep combination; raise `ConfigError`."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as error:  # Hydra's parser raises several types; all mean a malformed override
        raise ConfigError(_first_line(error)) from None
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [text]
               for text, o in zip(overrides, parsed)]
    for combination in itertools.islice(itertools.product(*choices), MAX_CHECKED_COMBINATIONS):
        try:
            cfg = compose(command, list(combination))
        except Exception as error:  # composition errors: unknown key, missing group option, bad type
            raise ConfigError(_composition_message(error)) from None
        to_typed(cfg, command)


def _composition_message(error: Exception) -> str:
    message = _first_line(error)
    cause = error.__cause__
    if cause is not None and ("not in struct" in str(cause) or "not in '" in str(cause)):
        message = (f"{message.rstrip('.')}: no such key ({_first_line(cause)}); `diffcomm <command> --help` lists the keys, "
                   "and a new key of a map (model.params, policy.objective) is added with +KEY=VALUE")
    elif cause is not None and "could not be converted" in str(cause) or "is not a valid" in str(cause or ""):
        message = f"{message.rstrip('.')}: {_first_line(cause)}"  # the type the key takes
    elif "hydra/launcher/submitit" in message:  # hydra/launcher=slurm without the plugin it extends
        message = f"{message.rstrip('.')}: the SLURM launcher needs Hydra's submitit plugin: pip install 'diffcomm[cluster]'"
    elif "Could not find '" in message:  # a group option that does not exist: name the ones that do
        group = message.split("Could not find '")[1].split("/")[0]
        options = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
        message = f"{message}; {group} must be one of {options}" if options else message
    return message


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"diffcomm {command}: error: {message}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------------------------
# Help
# --------------------------------------------------------------------------------------------


def _options(schema: type, values: dict, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, value, help) of every option of a schema, from the composed default config `values`."""
    rows = []
    for f in dataclasses.fields(schema):
        value = values[f.name]
        if isinstance(value, dict) and dataclasses.is_dataclass(_field_type(schema, f.name)):
            rows += _options(_field_type(schema, f.name), value, f"{prefix}{f.name}.")
            continue
        shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        rows.append((f"{prefix}{f.name}", shown if len(shown) <= 40 else shown[:37] + "...", f.metadata.get("help", "")))
    return rows


def _field_type(schema: type, name: str):
    return typing.get_type_hints(schema)[name]


def command_help(command: str) -> str:
    """What `diffcomm <command> --help` prints: the command's groups, options and examples."""
    lines = [f"usage: diffcomm {command} [-m] [key=value ...]", "", COMMANDS[command], ""]
    for group in GROUPS[command]:
        names = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
        lines.append(f"  {group}={'|'.join(names)}")
    if GROUPS[command]:
        lines = lines[:4] + ["groups (choose one option each):"] + lines[4:] + [""]
    lines.append("options (key=default, then what it means):")
    for key, default, text in _options(SCHEMAS[command], OmegaConf.to_container(compose(command), resolve=False)):
        if not key.startswith("runtime."):
            entry = f"  {key}={default}"
            lines += [entry.ljust(44) + f"  {text}"] if len(entry) <= 44 else [entry, " " * 46 + text]
    resumes = "; the same folder resumes its checkpoint" if command in ("calibrate", "optimize") else ""
    lines += ["", "also: -m (a sweep: key=a,b,c), --cfg job (print the composed config),",
              f"      hydra.run.dir=<folder> (where the run writes{resumes}),",
              "      runtime.compilation_cache=<folder>|null (compiled programs kept between runs),",
              "      runtime.devices=N (split the regions over N devices)", "", "examples:"]
    lines += [f"  {example}" for example in EXAMPLES[command]]
    return "\n".join(lines)


def usage() -> str:
    lines = ["usage: diffcomm <command> [-m] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
    lines += ["", "diffcomm <command> --help lists a command's options, with examples."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Running a command
# --------------------------------------------------------------------------------------------


def use_compilation_cache(setting: str) -> None:
    """Keep compiled programs between runs in `setting` (`auto`: the user cache folder, as
    `runtime.compilation_cache=auto`), from now on in this process."""
    folder = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "diffcomm" / "jax" \
        if setting == "auto" else Path(setting).expanduser()
    cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@contextlib.contextmanager
def _compilation_cache(setting: str | None):
    """`use_compilation_cache(setting)` (None: no cache) for one command, leaving JAX's settings
    as they were afterwards: a process that runs several commands (a sweep, a test session, a
    notebook) gets each command's own setting. (In a test session that inherited one command's
    cache, later compilations aborted inside XLA while writing to it.)"""
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    if setting is not None:
        use_compilation_cache(setting)
    try:
        yield
    finally:
        if setting is not None:
            cache.reset_cache()
            jax.config.update("jax_compilation_cache_dir", saved[0])
            jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])


def _work_in_thread(work: Callable[[], Any], *, x64: bool, staging: Path | None = None) -> Any:
    """Run `work` in a worker thread with x64 switched on for it only if asked; on Ctrl-C ask it
    to checkpoint and stop, and end the process if it has not within `GRACE_SECONDS`."""
    outcome: dict[str, Any] = {}
    finished = threading.Event()  # not Thread.join: a join interrupted by Ctrl-C can report a live thread dead

    def target():
        try:
            with jax.enable_x64(x64):
                outcome["value"] = work()
        except BaseException as error:  # handed to the main thread, which reports it
            outcome["error"] = error
        finally:
            finished.set()

    clear_stop()
    threading.Thread(target=target, name="diffcomm-work", daemon=True).start()
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        request_stop()

        def stop_now(*_):  # a second Ctrl-C, or the grace period over: end at once
            print("diffcomm: interrupted; no outputs were written", file=sys.stderr)
            sys.stderr.flush()
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)  # files a command was writing are not outputs
            os._exit(130)

        previous = signal.signal(signal.SIGINT, stop_now)
        try:
            print("diffcomm: stopping (Ctrl-C) ...", file=sys.stderr)
            if not finished.wait(GRACE_SECONDS):  # busy in compiled code that cannot be interrupted
                stop_now()
        finally:
            signal.signal(signal.SIGINT, previous)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _task(command: str) -> Callable[[DictConfig], None]:
    def task(cfg: DictConfig) -> None:
        logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # its backend probe is noise in run logs
        logging.getLogger("jax._src.compilation_cache").setLevel(logging.WARNING)  # and so is its cache reset
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        plain = OmegaConf.to_container(cfg, resolve=True)
        sweep = HydraConfig.get().mode == RunMode.MULTIRUN
        if sweep and finished_run(out_dir, plain):
            logging.getLogger("diffcomm").info("%s: finished in an earlier start of this sweep; skipped", out_dir)
            return
        (out_dir / FAILED_FILE).unlink(missing_ok=True)
        try:
            typed = to_typed(cfg, command)
            x64 = typed.x64 if command == "forecast" else typed.model.x64
            x64 = x64 or (command == "simulate" and typed.run is not None)  # a calibration's regions: as calibrated
            kwargs = dict(plain_config=plain)
            if command == "calibrate":
                try:
                    kwargs["optimizer"] = instantiate(typed.optimizer.transform) if typed.optimizer.transform else None
                except Exception as error:  # Hydra wraps whatever the target raised
                    raise ConfigError(f"optimizer.transform: {_first_line(error.__cause__ or error)}") from None
            if command == "calibrate" and typed.inference == "nuts":  # JAX has not computed yet: it can still make devices
                provide_cpu_devices(chain_devices(typed.nuts.chains, typed.chain_devices, usable_cores()))
            run = getattr(apps, f"run_{command}")
            with _compilation_cache(typed.runtime.compilation_cache):
                _work_in_thread(lambda: run(typed, out_dir, **kwargs), x64=x64, staging=out_dir / ".staging")
        except (ConfigError, DataError, FloatingPointError) as error:
            if sweep:  # the other runs of the sweep go on; sweep.csv marks this one failed
                _fail(command, f"{out_dir}: {error}")
                (out_dir / FAILED_FILE).write_text(f"{error}\n")
                return
            raise SystemExit(_fail(command, str(error))) from None
        except Interrupted as stop:
            if stop.path is None:  # work without checkpoints: nothing to resume
                print(f"diffcomm {command}: interrupted; no outputs were written", file=sys.stderr)
                raise SystemExit(130) from None
            print(f"diffcomm {command}: interrupted at step {stop.step}; the checkpoint is in {out_dir}. "
                  f"Run the same command with hydra.run.dir={out_dir} to resume.", file=sys.stderr)
            raise SystemExit(3) from None
        except MemoryError:
            raise SystemExit(_fail(command, "ran out of memory; ask for fewer regions or years")) from None

    return task


_SWEEP_FAILURES: list[str] = []  # what the sweep table found failed, for main()'s exit code


class SweepTable(Callback):
    """Hydra callback (in `conf/<command>.yaml`): at the end of a multirun, `sweep.csv` in the
    sweep folder, one row per run with its overrides and key results (`report.sweep`)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.sweep.dir)
        table = write_sweep_table(folder, self.command)
        counts = table.status.value_counts() if len(table) else {}
        logging.getLogger("diffcomm").info("sweep: %d of %d runs finished, %d failed -> %s", counts.get("finished", 0),
                                           len(table), counts.get("failed", 0), folder / SWEEP_FILE)
        if counts.get("failed", 0):  # main() ends with exit code 1 (Hydra turns a callback's error into a warning)
            _SWEEP_FAILURES.append(f"{counts['failed']} of {len(table)} runs failed; {folder / SWEEP_FILE} says which and why")


@contextlib.contextmanager
def _argv(args: list[str]):
    """Hydra reads its command line from `sys.argv`; set it for the app's call only."""
    saved = sys.argv
    sys.argv = args
    try:
        yield
    finally:
        sys.argv = saved


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `diffcomm` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # no command: a usage error
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"diffcomm {metadata.version('diffcomm')}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        return _fail(command, f"unknown command; expected one of {sorted(COMMANDS)}")
    if any(a in ("-h", "--help") for a in rest):
        print(command_help(command))
        return 0
    overrides = [a for a in rest if not a.startswith("-")]
    # other Hydra flags (--cfg job, --info, -cn ...) take values and print or redirect: Hydra checks those
    if all(a in ("-m", "--multirun") for a in rest if a.startswith("-")):
        try:
            check_overrides(command, overrides)
        except ConfigError as error:
            return _fail(command, str(error))
    _register_schemas()
    app = hydra.main(config_path=str(conf_dir()), config_name=command, version_base="1.3")(_task(command))
    _SWEEP_FAILURES.clear()
    try:
        with _argv([f"diffcomm {command}", *rest]):
            app()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return _fail(command, _SWEEP_FAILURES[-1], code=1) if _SWEEP_FAILURES else 0


if __name__ == "__main__":
    raise SystemExit(main())
