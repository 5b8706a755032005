"""`key=value` strings -> a frozen dataclass: strict keys, typed values, did-you-mean.

Used for `-D` (decoder), `-T` (task) and `dleval train` options. Values are coerced from the
field's annotation (int, float, bool, str, optional, tuples as comma lists). The names users
know from the dLLM repos' `--model_args` are accepted as aliases (`max_new_tokens`,
`block_size`, `diffusion_steps`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from dleval.errors import UserError, did_you_mean

T = TypeVar("T")

ALIASES = {"max_new_tokens": "gen_length", "block_size": "block_length", "diffusion_steps": "steps"}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_pairs(pairs: Iterable[str], flag: str = "-D") -> dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'}; also accepts lm-eval style 'a=1,b=x' in one string."""
    out: dict[str, str] = {}
    for item in pairs:
        for part in _split_model_args(item):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise UserError(f"{flag} expects key=value, got '{part}'")
            out[key.strip()] = value.strip()
    return out


def _split_model_args(item: str) -> list[str]:
    """Split 'a=1,b=2' on commas that start a new key, so 'threshold=0.3,0.4' stays one value."""
    parts: list[str] = []
    for chunk in item.split(","):
        if parts and "=" not in chunk:
            parts[-1] += "," + chunk
        else:
            parts.append(chunk)
    return parts


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a string (or already-typed value) to the annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except UserError:
                continue
        raise UserError(f"{key}={value!r} is not a valid {_name(annotation)}")
    if origin is tuple:
        # Items of a TOML list keep their whitespace (stop strings like "\nclass"); a command-line
        # "a, b" is split on commas and stripped.
        items = list(value) if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",") if v.strip()]
        inner = args[0] if args else str
        return tuple(coerce(v, inner, key) for v in items)
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{key} must be one of {', '.join(map(str, args))}, not '{value}'")
        return value
    if not isinstance(value, str):
        if annotation is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(annotation, type) and isinstance(value, annotation):
            return value
        value = str(value)
    try:
        if annotation is bool:
            low = value.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if annotation is int:
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return value
    except ValueError:
        raise UserError(f"{key}={value!r} is not a valid {_name(annotation)}") from None
    raise UserError(f"{key} has a type ({_name(annotation)}) that cannot be set from the command line")


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def build(cls: type[T], overrides: Mapping[str, Any], what: str, base: T | None = None) -> T:
    """An instance of dataclass `cls` (or `base` with replacements) with `overrides` applied.

    Unknown keys and bad values raise UserError naming `what` (e.g. "decoder 'llada'").
    """
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        name = key if key in names else ALIASES.get(key, key)
        if name not in names:
            raise UserError(f"{what} has no parameter '{key}'{did_you_mean(key, names)}; it takes: {', '.join(names)}")
        values[name] = coerce(value, hints[name], key)
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except (ValueError, TypeError) as exc:
        raise UserError(f"invalid {what} settings: {exc}") from None
