"""Stage configs as dataclasses: one field is one CLI flag and one recipe key.

A field's name is the flag (`per_query` -> `--per-query`) and the TOML key; its
`metadata["help"]` is the flag's help. Lists become `nargs="+"`, booleans become
`--flag/--no-flag`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Callable

from wit_builder.errors import WitError


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(element type, is_list) for a field annotation, unwrapping Optional."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return (args[0] if args else str), True
    return tp, False


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, seen: set[str] | None = None) -> None:
    """Add one flag per field of the dataclass `cls` (skipping names in `seen`)."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if seen is not None:
            if f.name in seen:
                continue
            seen.add(f.name)
        tp, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_ = f.metadata.get("help", "")
        if default not in (None, [], ()) and tp is not bool:
            help_ += f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_}
        if tp is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        kwargs["type"] = tp if tp in (int, float) else str
        if is_list:
            kwargs["nargs"] = "+"
        kwargs["metavar"] = f.metadata.get("metavar", f.name.upper())
        parser.add_argument(flag(f.name), **kwargs)


def coerce(cls: type, name: str, value: Any, where: str) -> Any:
    """Convert `value` to the type of field `name`, or raise WitError naming `where`."""
    tp, is_list = _base_type(_hints(cls)[name])
    try:
        if is_list:
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            return [tp(v) if tp in (int, float, str) else v for v in value]
        if tp is bool and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp in (int, float) and isinstance(value, bool):
            raise ValueError(value)  # `per_query = true` is not the number 1
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)  # 1.9 must not quietly become 1
        if tp in (int, float, str, bool):
            return _finite(name, tp(value), where)
        return value
    except (TypeError, ValueError, OverflowError):
        raise WitError(f"{where}: {name} = {value!r} is not a valid {getattr(tp, '__name__', tp)}") from None


def _finite(name: str, value: Any, where: str) -> Any:
    """NaN and infinity are no setting: a timeout of inf never fires, an lr of nan trains nothing."""
    if isinstance(value, float) and not math.isfinite(value):
        raise WitError(f"{where}: {name} = {value!r}: give a finite number")
    return value


def from_mapping(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build `cls` from a dict (a recipe table or parsed flags), checking every key."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise WitError(f"{where}: unknown setting(s) {', '.join(unknown)}; "
                       f"known: {', '.join(sorted(names))}")
    return cls(**{k: _checked(cls, k, coerce(cls, k, v, where), where) for k, v in values.items()})


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build `cls` from the flags that were given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    for k, v in given.items():
        _checked(cls, k, _finite(k, v, flag(k)), flag(k))
    return cls(**given)


def at_least(low: float, why: str = ""):
    """A field `check`: the value is at least `low` (`why` says what needs it)."""
    def check(value):
        return None if value >= low else f"must be at least {low:g}" + (f" ({why})" if why else "")
    return check


def above(low: float, why: str = ""):
    """A field `check`: the value is more than `low`."""
    def check(value):
        return None if value > low else f"must be above {low:g}" + (f" ({why})" if why else "")
    return check


def within(low: float, high: float, why: str = ""):
    """A field `check`: low <= value <= high."""
    def check(value):
        return None if low <= value <= high else \
            f"must be from {low:g} to {high:g}" + (f" ({why})" if why else "")
    return check


def one_of(names) -> Callable[[Any], str | None]:
    """A field `check`: the value is one of `names`."""
    def check(value):
        return None if value in names else f"unknown value; choose one of {', '.join(names)}"
    return check


def check_fields(cfg: Any, where: Callable[[str], str] = flag) -> Any:
    """Every field's own `check` on a built config (`where(name)`: how to name it)."""
    for f in dataclasses.fields(cfg):
        _checked(type(cfg), f.name, getattr(cfg, f.name), where(f.name))
    return cfg


def _checked(cls: type, name: str, value: Any, where: str) -> Any:
    """Run the field's own `metadata["check"]` (value -> problem or None), so a value
    that no stage could use is refused before the first stage starts."""
    check = next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("check")
    problem = check(value) if check and value is not None else None
    if problem:
        said = f"{where} {value!r}" if where == flag(name) else f"{where}: {name} = {value!r}"
        raise WitError(f"{said}: {problem}")
    return value


def output_settings(cfg: Any) -> dict[str, Any]:
    """The settings that change what a stage writes: its skip key. A field is one unless
    its metadata says `"output": False` (how fast, how many at once, a mode such as
    --retry-failed), so a new field is in the key until it is marked otherwise."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.metadata.get("output", True)} if not isinstance(cfg, dict) else dict(cfg)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
