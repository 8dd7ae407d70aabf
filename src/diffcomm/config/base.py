"""What every config shares: a field with its help text, the checks, and the run's settings."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from ..errors import ConfigError
from ..params import check_natural


def option(default: Any = None, help: str = "", *, factory=None):  # noqa: A002  (the word the help screen uses)
    """A config field with its one-line help (shown by `diffcomm <command> --help`)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def from_dict(schema: type, values: dict):
    """A config dataclass, nested ones too, from the plain dict `dataclasses.asdict` made of one."""
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for f in fields(schema):
        if f.name in values:
            value = values[f.name]
            kwargs[f.name] = from_dict(hints[f.name], value) if is_dataclass(hints[f.name]) and isinstance(value, dict) else value
    return schema(**kwargs)


def _require(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _share(x) -> bool:
    return _number(x) and 0.0 <= x <= 1.0


@dataclass
class ModelConfig:
    num_domains: int = option(3, "K: industry or technology domains")
    params: dict[str, Any] = option(help="natural-scale parameter values by name (+model.params.NAME=VALUE)", factory=dict)
    x64: bool = option(False, "double precision for this run (slower; the Hessian and exact budgets need it)")

    def __post_init__(self):
        domains = self.num_domains
        _require(isinstance(domains, int) and domains >= 1, "model.num_domains", "a positive integer", domains)
        try:
            check_natural(self.num_domains, dict(self.params))
        except ValueError as error:
            raise ConfigError(f"model.params: {error}") from None


@dataclass
class RuntimeConfig:
    compilation_cache: str | None = option("auto", "folder of compiled programs kept between runs; auto: the "
                                                   "user cache folder; null: none")
    devices: int = option(1, "devices the regions are split over (jax.sharding); must divide the number of regions")

    def __post_init__(self):
        _require(isinstance(self.devices, int) and self.devices >= 1, "runtime.devices", "a count >= 1", self.devices)
