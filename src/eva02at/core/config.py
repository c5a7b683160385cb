"""Params: read as DVC reads them, checked against one schema before any work.

The schema is the stages' plain dataclasses: their type hints give each key's type, range (``PositiveInt``,
``Fraction``, ...) and allowed values (``Literal``), and a ``__post_init__`` checks what spans several keys.
pydantic validates a section against it in strict mode with JSON semantics, which is what YAML data is: a
string never becomes a number (``lr: "1e-4"``), a number never a boolean, a list fills a tuple, and an
unknown key is refused. What this module adds to pydantic is the error: one line naming the key path
(``finetune.optim.lr``), the value and what is allowed; and that every section (a field whose type is a
dataclass, e.g. ``finetune.train``) must be written out: a deleted or mis-indented section is refused, never
filled with the code's defaults, so that what a run uses is in params.yaml, where DVC sees it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    create_model,
)
from pydantic_core import ErrorDetails, core_schema
from ruamel.yaml import YAML, YAMLError

from eva02at.core.errors import MissingInput, PipelineError

__all__ = [
    "CheckedAs",
    "ConfigError",
    "Fraction",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "from_dict",
    "read_params",
]

T = TypeVar("T")
Fraction = Annotated[float, Field(ge=0, le=1)]
STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
JSON_TYPES = (str, int, float, bool, type(None))


class ConfigError(PipelineError, ValueError):
    """A params section does not fit the dataclass it configures."""


@dataclasses.dataclass(frozen=True)
class CheckedAs:
    """Metadata of a mapping field, ``Annotated[dict[str, Any], CheckedAs(cls)]``: its value is checked against
    dataclass ``cls`` (errors at their key path, unknown keys refused) and kept as written, so that what a run
    records of it (its config, its fingerprint) is what the params file says, not ``cls``'s defaults filled in.
    For a section whose schema is known only at run time (e.g. each registered loss's params)."""

    cls: type

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_wrap_validator_function(self._check, handler(source))

    def _check(self, value: Any, handler: Callable[[Any], Any]) -> Any:
        value = handler(value)
        try:
            _section_model(self.cls).model_validate_json(json.dumps({"section": value}))
        except ValidationError as err:  # the same problems, at paths below this field's (without "section")
            details = [{**error, "loc": error["loc"][1:]} for error in err.errors(include_url=False)]
            raise ValidationError.from_exception_data(err.title, details) from None  # type: ignore[arg-type]
        return value


def parse_yaml(text: str) -> Any:
    """YAML text as DVC reads it: YAML 1.2 through ruamel.yaml (``1e-4`` is a number, ``yes`` a string)."""
    return YAML(typ="safe").load(text)


def read_params(path: str | Path) -> dict[str, Any]:
    """A params file as DVC reads it (``parse_yaml``); a missing or unreadable file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: no such params file")
    try:
        data = parse_yaml(path.read_text())
    except YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(data, dict | None):
        raise ConfigError(f"{path}: expected sections (a mapping), got a {type(data).__name__}")
    return data or {}


def read_section(cls: type[T], path: str | Path, section: str) -> T:
    """The ``section`` of params file ``path``, built as ``cls`` and checked (errors name the file and key path)."""
    params = read_params(path)
    if section not in params:
        raise ConfigError(f"{path}: no '{section}' section")
    return from_dict(cls, params[section], f"{path}: {section}")


def from_dict(cls: type[T], values: Any, where: str = "") -> T:
    """Build dataclass ``cls`` (nested dataclasses, dicts and lists of them included) from params ``values``.

    Any key that does not fit is a ConfigError whose one line names its full path, starting at ``where``
    (e.g. ``finetune`` gives ``finetune.optim.lr``).
    """
    where = where or cls.__name__
    _refuse_non_json(values, where)
    _require_sections(cls, values, where)
    try:
        return _section_model(cls).model_validate_json(json.dumps({"section": values})).section  # type: ignore[attr-defined]
    except ValidationError as err:
        problems = [_describe(error, cls, where) for error in err.errors()]
        raise ConfigError("; ".join(problems)) from err


@functools.cache
def _section_model(cls: type) -> type[BaseModel]:
    """A one-field model carrying the strict config, so that the dataclasses themselves stay plain."""
    return create_model(f"{cls.__name__}Section", __config__=STRICT, section=(cls, ...))


def _require_sections(cls: type, values: Any, where: str) -> None:
    """Every dataclass-typed field of ``cls`` present in ``values``, recursively (an optional one may be
    left out or null); pydantic would fill a missing one from the dataclass's default factory."""
    if not (dataclasses.is_dataclass(cls) and isinstance(values, dict)):
        return
    try:
        hints = typing.get_type_hints(cls)
    except NameError:  # annotations that cannot be resolved again (a class whose module left sys.modules)
        hints = {item.name: item.type for item in dataclasses.fields(cls)}
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        if not dataclasses.is_dataclass(hint):
            continue
        if item.name not in values:
            raise ConfigError(
                f"{where}.{item.name}: missing section (required: write it out in the params file, even empty as "
                f"{item.name}: {{}}; a section indented under another key is not where it belongs)"
            )
        _require_sections(hint, values[item.name], f"{where}.{item.name}")


def _refuse_non_json(value: Any, path: str) -> None:
    """YAML also has timestamps (``2024-01-01``): no param is one (DVC refuses them too); a quoted string is what
    was meant. Keys must be strings, as they are in JSON."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{path}: key {key!r} must be text (quote it)")
            _refuse_non_json(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _refuse_non_json(item, f"{path}.{index}")
    elif not isinstance(value, JSON_TYPES):
        raise ConfigError(f"{path} = {value!r}: a YAML {type(value).__name__}, not a params value (quote it)")


def _describe(error: ErrorDetails, cls: type, where: str) -> str:
    """One problem as ``path = value: what is allowed``."""
    keys = [str(part) for part in error["loc"][1:] if part != "[key]"]  # pydantic marks a bad dict key "[key]"
    path = ".".join([where, *keys])
    kind = error["type"]
    if kind == "unexpected_keyword_argument":
        known = _field_names(cls, keys[:-1])
        return f"{path}: unknown key" + (f"; known keys are {known}" if known else "")
    if error["loc"][-1] == "[key]":
        return f"{path}: unknown key; {error['msg']}"
    if kind in ("missing", "missing_argument"):
        return f"{path}: missing (required)"
    value = repr(error["input"])
    shown = f"{path} = {value if len(value) <= 80 else value[:77] + '...'}"
    if kind == "value_error":  # a validator's own check: a section's names only its path
        message = error.get("ctx", {}).get("error", error["msg"])
        return f"{path if isinstance(error['input'], dict) else shown}: {message}"
    return f"{shown}: {error['msg']}"


def _field_names(hint: Any, keys: list[str]) -> list[str]:
    """The keys of the dataclass at ``keys`` below ``hint`` (through dicts, lists and optionals); [] if none."""
    for key in [*keys, None]:
        while typing.get_origin(hint) in (typing.Union, typing.Annotated) or isinstance(hint, type(int | None)):
            checked = [item.cls for item in getattr(hint, "__metadata__", ()) if isinstance(item, CheckedAs)]
            hint = checked[0] if checked else next(arg for arg in typing.get_args(hint) if arg is not type(None))
        if key is None:
            break
        if dataclasses.is_dataclass(hint):
            hint = typing.get_type_hints(hint, include_extras=True).get(key)
        elif typing.get_origin(hint) in (dict, list, tuple):
            hint = typing.get_args(hint)[-1 if typing.get_origin(hint) is dict else 0]
        else:
            return []
    return sorted(f.name for f in dataclasses.fields(hint)) if dataclasses.is_dataclass(hint) else []
