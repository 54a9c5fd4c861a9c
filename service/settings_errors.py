"""How a settings mistake is told: one line naming the key, what is wrong, and what to write
instead (the nearest key for an unknown one)."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

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
    message = first["msg"].removeprefix("Value error, ")
    # One mistake per key: a value no member of a union takes is an error for each.
    others = len({_key(error["loc"]) for error in exc.errors()}) - 1
    more = f" (and {others} more)" if others else ""
    return f"invalid setting '{key}': {message}{more}"


def _nearest_key(key: str, settings: type[BaseModel]) -> str:
    """What to write instead of the unknown ``key`` (``a.b`` for a nested one): the nearest
    key its level takes, or the spelling to check, as a YAML key or an ``ERS_`` variable."""
    *parents, name = key.split(".")
    model: Any = settings
    for part in parents:
        field = model.model_fields.get(part)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            model = None
            break
    close = difflib.get_close_matches(name, list(model.model_fields), n=1) if model else []
    if close:
        return f"did you mean {'.'.join([*parents, close[0]])}?"
    variable = "ERS_" + key.upper().replace(".", "__")
    return f"check its spelling (in the YAML file, or {variable})"
