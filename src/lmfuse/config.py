"""The typed configuration layer: frozen pydantic dataclasses, choices checked once, lmfuse errors.

Every configuration (a recipe's sections, `ServeConfig`; `PackConfig` is a pydantic model with the same
errors) is declared with ``@section`` (a frozen ``pydantic.dataclasses.dataclass`` that refuses unknown
keys). A field that names a strategy is ``Annotated[str, OneOf(REGISTRY)]``: pydantic checks it once, when
the configuration is built, against the registry's names (or a tuple), and the JSON schema lists them.
A section that may be written as a plain string (a member, a reward) is ``Annotated[Spec, Shorthand(key)]``.

pydantic reports every problem as one ``ValidationError``; ``config_error`` turns it into lmfuse's own
error (an ``UnknownChoiceError`` for an unknown choice, else an ``InputError``) whose one line names each
bad key by its dotted path (``train.grad_accum``) and the bad value, and, for an unknown key or choice, the
closest valid ones. Building a section in Python (``TrainConfig(grad_accum=0)``, ``dataclasses.replace``)
raises the same errors.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast, dataclass_transform, overload

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import core_schema

from lmfuse.errors import InputError, LmfuseError
from lmfuse.registry import UnknownNameError, suggest

CONFIG = ConfigDict(extra="forbid")
"""Every section: unknown keys are errors (the converter below suggests the closest key)."""

T = TypeVar("T")


@overload
def section(cls: type[T], /) -> type[T]: ...


@overload
def section(*, where: str = "config", prefix: bool = False) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, Field))
def section(cls: type[T] | None = None, /, *, where: str = "config",
            prefix: bool = False) -> type[T] | Callable[[type[T]], type[T]]:
    """A frozen pydantic dataclass whose construction raises lmfuse errors: ``where`` and ``prefix`` are
    `config_error`'s (``@section(where="serve", prefix=True)``)."""

    def build(cls: type[T]) -> type[T]:
        built = cast(type[T], pydantic_dataclass(frozen=True, config=CONFIG)(cls))
        init = built.__init__

        @functools.wraps(init)
        def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise config_error(exc, built, where, prefix=prefix) from None

        built.__init__ = checked_init  # type: ignore[method-assign]
        return built

    return build if cls is None else build(cls)


@dataclass(frozen=True)
class OneOf:
    """A string field's valid values: a registry's names (read when checked, so late registrations
    count) or a fixed tuple. An unknown value is an ``UnknownChoiceError`` with "did you mean"."""

    valid: Iterable[str]
    what: str = ""

    def names(self) -> list[str]:
        return list(self.valid)

    def check(self, value: str) -> str:
        if value not in self.names():
            raise UnknownChoiceError(suggest(value, self.names(), self.what or getattr(self.valid, "what", "value")))
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        out = dict(handler(schema))
        out["enum"] = self.names()
        return out


class UnknownChoiceError(UnknownNameError, InputError):
    """A configured value that is not one of its field's choices: a bad input (``InputError``) that names the
    closest valid choices, as an unknown registry name does (``UnknownNameError``)."""


@dataclass(frozen=True)
class Shorthand:
    """A section that may be written as one string, read as its ``key`` (``target: toy:bytebpe`` is
    ``target: {model: toy:bytebpe}``); the JSON schema accepts both forms."""

    key: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(
            lambda value: {self.key: value} if isinstance(value, str) else value, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {"anyOf": [{"type": "string", "description": f"shorthand for {{{self.key}: ...}}"}, handler(schema)]}


def config_error(exc: ValidationError, root: Any, where: str, *, prefix: bool = False) -> LmfuseError:
    """One lmfuse error for all of a ``ValidationError``'s problems, each named by its dotted key.

    ``root`` is the section or pydantic model that was built; ``where`` is what it is called (``recipe``,
    ``serve``, ``member 'qwen-coder,dtype=fp8'``). With ``prefix`` the line starts with it (``serve:
    max_batch: ...``), for a configuration whose keys alone do not say where they belong; without it only
    a problem of the root itself names it (``recipe: missing required key 'name'``)."""
    messages: list[str] = []
    unknown_name = False
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        path = ".".join(loc)
        subject = path or ("" if prefix else where)
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, UnknownChoiceError):
            unknown_name = True
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            messages.append(_unknown_key(root, loc, "" if prefix else where))
        elif err["type"] in ("missing", "missing_argument"):
            what = f"entry {loc[-1]} (0-based)" if loc[-1].isdigit() else f"required key {loc[-1]!r}"
            messages.append(_said(".".join(loc[:-1]) or ("" if prefix else where), f"missing {what}"))
        elif isinstance(cause, Exception):  # our own checks: "train.epochs must be ...", "sources.0: member ..."
            messages.append(f"{path} {cause}" if path and str(cause).startswith("must ") else _said(path, str(cause)))
        else:
            got = err.get("input")
            messages.append(_said(subject, f"{err['msg'][0].lower()}{err['msg'][1:]} (got {got!r})"))
    text = "; ".join(messages)
    text = f"{where}: {text}" if prefix else text
    return UnknownChoiceError(text) if unknown_name and len(messages) == 1 else InputError(text)


def _said(subject: str, message: str) -> str:
    return f"{subject}: {message}" if subject else message


def _unknown_key(root: Any, loc: list[str], where: str) -> str:
    inside = ".".join(loc[:-1]) or where
    owner = field_type(root, loc[:-1])
    hint = getattr(owner, "FOREIGN_KEYS", {}).get(loc[-1])  # a key another kind of recipe has
    if hint:
        return f"{'.'.join(loc)}: {hint}"
    return suggest(loc[-1], field_names(owner), f"key in {inside}" if inside else "key")


def field_names(owner: Any) -> list[str]:
    """The keys a section or pydantic model takes (none for anything else)."""
    if dataclasses.is_dataclass(owner):
        return [f.name for f in dataclasses.fields(owner)]
    if isinstance(owner, type) and issubclass(owner, BaseModel):
        return list(owner.model_fields)
    return []


def field_type(root: Any, loc: list[str]) -> Any:
    """The declared type at a dotted location inside section or model ``root`` (list indices step into
    tuples and lists)."""
    tp = root
    for part in loc:
        tp = _unwrap(tp)
        if part.isdigit() and typing.get_origin(tp) in (tuple, list):
            tp = typing.get_args(tp)[0]
        elif field_names(tp):
            tp = typing.get_type_hints(tp, include_extras=False).get(part)
        else:
            return None
    return _unwrap(tp)


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X`` (the only unions sections declare)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp
