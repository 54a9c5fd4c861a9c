"""How a settings mistake is told: one line naming the key, what is wrong, and what to write
instead (the nearest key for an unknown one)."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Sequence
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from service.config_checks import InvalidSetting, a_mapping_expected

# What pydantic adds to a location for each member of a union it tried (``float | int``):
# no key of the settings.
UNION_MEMBERS = frozenset({"float", "int"})


def _key(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location if part not in UNION_MEMBERS)


def describe_validation_error(exc: ValidationError, settings: type[BaseModel]) -> str:
    """The first mistake of ``exc`` in one line naming its key, for the settings model
    ``settings``."""
    first = exc.errors()[0]
    cause = first.get("ctx", {}).get("error")
    named = cause.key if isinstance(cause, InvalidSetting) else "settings"
    key = _key(first["loc"]) or named
    if first["type"] == "extra_forbidden" and key.split(".")[0] == "notifications":
        return (  # nothing read the key: remove it
            f"invalid setting '{key}': ERS sends no notifications itself; people are notified "
            "by Alertmanager's `people` receiver (alerts/alertmanager.yml), of every alert"
        )
    if first["type"] == "extra_forbidden":
        return f"invalid setting '{key}': unknown key; {_nearest_key(key, settings)}"
    if first["type"] in ("model_type", "dict_type"):  # one value where names map to values
        return f"invalid setting '{key}': {a_mapping_expected(key)}"
    message = told_mistake(first, _field(key, settings))
    # One mistake per key: a value no member of a union takes is an error for each.
    others = len({_key(error["loc"]) for error in exc.errors()}) - 1
    more = f" (and {others} more)" if others else ""
    return f"invalid setting '{key}': {message}{more}"


def told_mistake(error: ErrorDetails, field: FieldInfo | None) -> str:
    """pydantic's words for one mistake; for a number's, a switch's or a word's of a few
    (``field``'s), with the value given and all that the field allows."""
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in SHOWN_MISTAKES:
        value = error.get("input")
        told = [f"given {_written(value)}"] if _shown(value) else []
        if field is not None and (allowed := _allowed(field)):
            told.append(f"allowed: {allowed}")
        message += f" ({'; '.join(told)})" if told else ""
    return message


# Mistakes of a number, a switch or a word of a few: their value is shown as given (the
# settings' errors show no input, since a URL or a token may hold a password; none of these
# is one), with the whole range allowed, where pydantic names only the bound broken.
SHOWN_MISTAKES = frozenset(
    {
        "int_type",
        "int_parsing",
        "float_type",
        "int_from_float",
        "float_parsing",
        "finite_number",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "bool_type",
        "bool_parsing",
        "enum",
        "literal_error",
    }
)


def _shown(value: object) -> bool:
    return isinstance(value, (str, int, float)) and len(str(value)) <= 40


def _written(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _field(key: str, settings: type[BaseModel]) -> FieldInfo | None:
    """The field of a dotted ``key`` (``backup_interval_minutes.budgets``), if a model has it."""
    *parents, name = key.split(".")
    model = _model_at(parents, settings)
    return model.model_fields.get(name) if model is not None else None


def _model_at(parents: list[str], settings: type[BaseModel]) -> type[BaseModel] | None:
    """The model the keys ``parents`` lead to from ``settings``; None past a value."""
    model: Any = settings
    for part in parents:
        field = model.model_fields.get(part)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    return model


def _allowed(field: FieldInfo) -> str | None:
    """What a number or a switch takes, a number's bounds both named (``a whole number from 1
    to 10000``); None for any other field."""
    members = {a for a in (field.annotation, *get_args(field.annotation)) if a is not type(None)}
    if bool in members:
        return "true or false"
    if not members & {int, float}:
        return None
    bounds = {
        name: _number(getattr(rule, name))
        for rule in field.metadata
        for name in ("ge", "gt", "le")
        if hasattr(rule, name)
    }
    kind = "a whole number" if int in members else "a number"
    if "ge" in bounds and "le" in bounds:
        return f"{kind} from {bounds['ge']} to {bounds['le']}"
    low = f"above {bounds['gt']}" if "gt" in bounds else None
    low = f"at least {bounds['ge']}" if "ge" in bounds else low
    high = f"at most {bounds['le']}" if "le" in bounds else None
    told = ", ".join(filter(None, (low, high)))
    return f"{kind} {told}" if told else None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _nearest_key(key: str, settings: type[BaseModel]) -> str:
    """What to write instead of the unknown ``key`` (``a.b`` for a nested one): the nearest
    key its level takes, or the spelling to check, as a YAML key or an ``ERS_`` variable."""
    *parents, name = key.split(".")
    model = _model_at(parents, settings)
    close = difflib.get_close_matches(name, list(model.model_fields), n=1) if model else []
    if close:
        return f"did you mean {'.'.join([*parents, close[0]])}?"
    variable = "ERS_" + key.upper().replace(".", "__")
    return f"check its spelling (in the YAML file, or {variable})"


def where_set(message: str, options: Sequence[str] = ()) -> str:
    """``message`` (``invalid setting 'a.b.c': ...``) with the environment variable that set
    that setting (or the JSON mapping holding it), which wins over the settings file: a
    mistake was looked for in the file in vain. Not for one of the command line's
    ``options``, nor a variable the message names already, or that left it unset (blank)."""
    found = re.match(r"invalid setting '([^']+)'", message)
    if found is None or found.group(1) in options:
        return message
    keys = found.group(1).split(".")
    given = {name.upper(): name for name in os.environ}
    for length in range(len(keys), 0, -1):  # ERS_AGENTS__HELPER__TIMEOUT_S, ..., ERS_AGENTS
        name = given.get("ERS_" + "__".join(keys[:length]).upper())
        if name is None or re.search(rf"(?<!\w){re.escape(name)}(?!\w)", message, re.I):
            continue  # none, or named already (not as the start of a longer name)
        value = os.environ[name]
        if length == len(keys):
            if value.strip() or ": empty;" in message:
                return f"{message} (set by ${name})"
            continue
        try:
            held: Any = json.loads(value)
        except ValueError:
            continue
        for key in keys[length:]:  # the setting is in the mapping the variable gives
            held = held.get(key) if isinstance(held, dict) else None
        if held is not None:
            return f"{message} (set by ${name})"
    return message
