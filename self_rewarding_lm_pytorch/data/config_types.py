"""The type check of a config's numeric and boolean fields, run first by every stage and training config.

A config's range checks compare its fields (`learning_rate > 0`); a field given as text (`learning_rate='1e-5'`,
as read from a YAML or a command line) would fail there with Python's own `TypeError: '<=' not supported ...`,
which names neither the config nor the field. `check_field_types(config)` reads each field's annotation and
refuses a value of the wrong type with a message that names the config, the field, the value, its type and the fix:

    int           an integer (numpy's too), not a bool, a float or a string
    float         a real number (an int too), not a bool or a string
    bool          True or False (or numpy's)
    X | None      X, or None

Fields of any other annotation (datasets, callables, dicts, literals) are left to the config's own checks.
"""

from __future__ import annotations

import inspect
import numbers
import types
import typing
from dataclasses import fields
from functools import cache

_KINDS = {int: "an int", float: "a number", bool: "True or False"}


def _kind(annotation) -> tuple[type | None, bool]:
    """(int, float, bool or None: the value's kind, whether None is allowed) of a resolved annotation."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = set(typing.get_args(annotation))
        optional = type(None) in args
        args.discard(type(None))
        if args == {int, float}:
            return float, optional
        if len(args) != 1:
            return None, optional
        (annotation,) = args
    return (annotation if annotation in _KINDS else None), optional


def _resolved_hints(cls: type) -> dict:
    """`cls`'s annotations resolved, or none when one does not resolve (its own fields then go unchecked)."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, AttributeError, TypeError, SyntaxError):
        return {}


@cache
def typed_fields(cls: type) -> tuple[tuple[str, type, bool], ...]:
    """(field name, kind, optional) of each int, float or bool field of the dataclass `cls`: the kind of its last
    declaration along the MRO; optional when any declaration allows None (a base's `float | None` that a subclass
    redeclares as `float` leaves None to the subclass's own check, which says what None would mean there).
    Annotations resolve class by class, so a base's fields are checked even when a subclass (e.g. one written in
    a notebook) names a type its module cannot resolve."""
    kinds: dict[str, tuple[type | None, bool]] = {}
    for base in reversed(cls.__mro__):
        own = inspect.get_annotations(base)
        resolved = _resolved_hints(base) if own else {}
        for name in own:
            if name in resolved:
                kind, optional = _kind(resolved[name])
                kinds[name] = (kind, optional or kinds.get(name, (None, False))[1])
    found = []
    for f in fields(cls):
        kind, optional = kinds.get(f.name, (None, False))
        if kind is not None:
            found.append((f.name, kind, optional))
    return tuple(found)


def _is_bool(value) -> bool:
    """A bool, or numpy's (no int subclass: `numpy.bool_`, named `numpy.bool` since numpy 2)."""
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"))


def _fits(value, kind: type) -> bool:
    if kind is bool or _is_bool(value):
        return kind is bool and _is_bool(value)
    return isinstance(value, numbers.Integral if kind is int else numbers.Real)


def _fix(value, kind: type, optional: bool) -> str:
    """What to pass instead of `value`."""
    text = value.strip() if isinstance(value, str) else None
    if kind is bool:
        if text is not None and text.lower() in ("true", "false"):
            return f"pass {text.lower() == 'true'}, not the string"
        return f"pass True or False{' or None' if optional else ''}"
    if text is not None:
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None and (kind is float or number.is_integer()):
            return f"pass {int(number) if kind is int else text}, not the string"
    if kind is int and isinstance(value, numbers.Real) and not _is_bool(value) and float(value).is_integer():
        return f"pass {int(value)}"
    return f"pass {_KINDS[kind]}{' or None' if optional else ''}"


def check_field_types(config, name: str | None = None):
    """Raise TypeError for the first int, float or bool field of the dataclass `config` whose value is not of that
    type (None is accepted where the annotation allows it): `{name}.{field} must be ..., got {value!r} ({type}):
    {fix}`. `name` defaults to the config's class name. Run it before any check that compares a field."""
    name = name or type(config).__name__
    for field_name, kind, optional in typed_fields(type(config)):
        value = getattr(config, field_name)
        if (value is None and optional) or (value is not None and _fits(value, kind)):
            continue
        raise TypeError(
            f"{name}.{field_name} must be {_KINDS[kind]}{' or None' if optional else ''}, got {value!r} "
            f"({type(value).__name__}): {_fix(value, kind, optional)}"
        )
