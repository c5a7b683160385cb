"""Strict configuration: dataclasses built from params dictionaries that refuse unknown keys."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from eva02at.errors import PipelineError

T = TypeVar("T")


class ConfigError(PipelineError, ValueError):
    """A params section does not fit the dataclass it configures."""


def from_dict(cls: type[T], values: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``values``; unknown keys and missing required keys are errors.

    Nested dataclass fields are built recursively, so ``where`` names the full path of a bad key
    (e.g. ``finetune.optim.lr``).
    """
    values = dict(values or {})
    where = where or cls.__name__
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        sub = _dataclass_type(hints[name])
        kwargs[name] = from_dict(sub, value, f"{where}.{name}") if sub and isinstance(value, dict) else value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


def _dataclass_type(hint: Any) -> type | None:
    """The dataclass inside ``hint`` (plain or ``X | None``), if any."""
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg  # type: ignore[return-value]
    return None
