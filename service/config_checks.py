"""Checks of what the settings point at (the YAML file, the database URL) and of settings
that must agree. Each failure is one line a person can act on; none quotes a secret."""

from __future__ import annotations

import difflib
import os
import stat
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from telemetry.classifier import yaml_error_where


class SettingsError(Exception):
    """Start-up configuration is invalid; the message names the key and the problem."""


class InvalidSetting(ValueError):
    """A check across several settings failed; ``key`` is the setting to change."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# The longest a breaker may stay open (each agent's open_duration_s and max_open_duration_s).
LONGEST_OPEN_S = 86_400.0


def check_open_durations(settings: Any) -> Any:
    """A breaker's open time backs off from its open duration up to its max: a max shorter
    than the duration cannot be kept, and is refused rather than quietly raised to it."""
    first, most = settings.breaker_open_duration_s, settings.breaker_max_open_duration_s
    if most < first:
        raise InvalidSetting(
            "breaker_max_open_duration_s",
            f"breaker_max_open_duration_s ({most:g}) is shorter than breaker_open_duration_s "
            f"({first:g}), the open time it backs off from; set it to at least {first:g}, or "
            "lower breaker_open_duration_s",
        )
    for name, overrides in settings.agent_breakers.items():
        # Each side the agent's own, or the default it leaves in place.
        own_first = _own(overrides, "open_duration_s", first, "breaker_open_duration_s")
        own_most = _own(overrides, "max_open_duration_s", most, "breaker_max_open_duration_s")
        # One past its range is named as such (breaker_configs), not met with a max past it.
        if own_most[0] < own_first[0] <= LONGEST_OPEN_S:
            raise InvalidSetting(
                f"agent_breakers.{name}",
                f"max_open_duration_s ({own_most[1]}) is shorter than open_duration_s "
                f"({own_first[1]}); give agent_breakers.{name} a max_open_duration_s of at "
                f"least {own_first[0]:g}, or a shorter open_duration_s",
            )
    return settings


def _own(
    overrides: Mapping[str, float], key: str, default: float, setting: str
) -> tuple[float, str]:
    """An agent's breaker value, and how to say it: the default's says which setting it is."""
    if key in overrides:
        return overrides[key], f"{overrides[key]:g}"
    return default, f"{default:g}, from {setting}"


POSTGRES_SCHEMES = ("postgresql", "postgres")


def check_database_url(url: str) -> None:
    """Raise ValueError naming what is wrong with a PostgreSQL URL, never quoting it."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in POSTGRES_SCHEMES:
        shown = f"scheme '{scheme}'" if scheme and scheme.isalnum() else "no scheme"
        raise ValueError(
            f"only postgresql://… or postgres://… URLs are accepted (got {shown}); "
            "unset it to keep the state in SQLite files"
        )
    authority = url.partition("://")[2]
    for end in "/?#":
        authority = authority.partition(end)[0]
    if authority.count("@") > 1:
        # Only the last @ ends the user part: the rest of the password would be taken for
        # the host name, and printed in every connection error.
        raise ValueError("the password or user name holds an '@'; percent-encode it as %40")
    try:
        urlsplit(url).port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(
            "not a valid URL (check the port and percent-encode special characters in "
            "the user name and password)"
        ) from None


def check_trace_link(template: str) -> None:
    """``trace_url_template`` fills in ``{trace_id}`` and nothing else: any other field
    (``{id}``, ``{trace_id.real}``, ``{trace_id[0]}``, ``{trace_id:>40}``) raises ValueError
    here, at start, instead of in every reply that shows an incident's traces."""
    wrong = "a URL with {trace_id} where the trace id goes and no other braces"
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError:
        raise ValueError(wrong) from None
    if any(field != ("trace_id", "", None) for field in fields):
        raise ValueError(wrong)
    if not fields:
        raise ValueError("the URL has no {trace_id}; put it where the trace id goes")


def blank_to_none(value: SecretStr | None) -> SecretStr | None:
    """A token of nothing but blanks is no token: no request could present it."""
    return None if value is None else presentable_token(value.get_secret_value())


def presentable_token(text: str) -> SecretStr | None:
    """The token as a request presents it: a header's value arrives without the blanks
    around it, and holds printable ASCII only. A token kept otherwise refused every request
    with a 401, the right token included."""
    token = text.strip()
    for char in token:
        if not (char.isascii() and char.isprintable()):
            raise ValueError(
                f"the token holds the character U+{ord(char):04X}, which is not printable "
                "ASCII: no request's Authorization header could present it; use letters, "
                "digits and punctuation"
            )
    return SecretStr(token) if token else None


def refuse_boolean_number(value: object, annotation: object) -> object:
    """YAML reads ``yes``, ``no``, ``on``, ``off``, ``true`` and ``false`` as booleans, and a
    number setting would take one for 1 or 0 (``max_backups: yes`` kept one snapshot): a
    number must be written as one."""
    if isinstance(value, bool) and _is_number(annotation):
        raise ValueError(_NOT_A_NUMBER.format(str(value).lower()))
    if isinstance(value, dict) and get_origin(annotation) is dict:
        # agent_breakers: {budget: {open_duration_s: on}}: numbers under names
        for key, item in value.items():
            try:
                refuse_boolean_number(item, get_args(annotation)[1])
            except ValueError as exc:
                said = str(exc)
                where = f"{key} " if said.startswith("must") else f"{key}."
                raise ValueError(where + said) from None
    return value


_NOT_A_NUMBER = (
    "must be a number, not {} (YAML reads yes, no, on and off as true or false); write the number"
)


def _is_number(annotation: object) -> bool:
    """int, float, or a union of them (with None): never bool, which is an int too."""
    if annotation in (int, float):
        return True
    members = [a for a in get_args(annotation) if a is not type(None)]
    return (
        bool(members)
        and get_origin(annotation) in (Union, UnionType)
        and all(a in (int, float) for a in members)
    )


def refuse_blank(value: object, annotation: object) -> object:
    """An empty path means the working directory, never what was meant (an unset compose
    variable gives one): refuse it before it becomes ``Path('.')``. A key of the YAML file
    with nothing after it (its value commented out) is as empty, where None means nothing:
    pydantic's word for it named a type (``not a valid path for <class 'pathlib.Path'>``)."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("empty; set it, or leave the variable out for the default")
    if value is None and type(None) not in (annotation, *get_args(annotation)):
        raise ValueError("empty (null in the YAML file); write a value, or remove the key")
    return value


class EnvironmentSource(PydanticBaseSettingsSource):
    """The environment's settings as they stand over the YAML file's. A blank value of one
    of ``names`` (``ERS_DATABASE_URL=``, as an unset compose variable gives) is unset, so
    the file's value holds, as with the variable left out; and a token the environment
    gives, itself or by its ``_FILE`` (not both), is the one used, whichever form the file's
    takes."""

    def __init__(self, source: PydanticBaseSettingsSource, names: frozenset[str]) -> None:
        super().__init__(source.settings_cls)
        self.source, self.names = source, names

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        values = {
            name: value
            for name, value in self.source().items()
            if not (name in self.names and isinstance(value, str) and not value.strip())
        }
        for token in ("admin_token", "alert_token", "intake_token"):
            if not str(values.get(f"{token}_file") or "").strip():
                continue  # none, or blank: refused as blank, naming its own variable
            if values.get(token) is not None:  # which one was meant cannot be told
                variable = f"ERS_{token.upper()}"
                raise SettingsError(
                    f"invalid setting '{token}': {variable} and {variable}_FILE are both set;"
                    " keep one of them"
                )
            values[token] = None  # read from the file, whatever form the YAML file's takes
        return values


def token_needed(settings: Any, name: str) -> str:
    """What production asks for when the ``name`` token is missing."""
    needed = f"ERS_{name.upper()}_TOKEN or ERS_{name.upper()}_TOKEN_FILE"
    file = getattr(settings, f"{name}_token_file")
    return f"{needed} ({file} is blank)" if file is not None else needed


def a_mapping_expected(key: str) -> str:
    """A setting of names and their values given one value (``backup_interval_minutes: 5``,
    ``ERS_AGENT_ROUTES=5``): how to write it. The value itself is not repeated."""
    variable = "ERS_" + key.upper().replace(".", "__")
    return (
        f"a mapping of names to values, not a single value: write {key}: {{NAME: value}} in "
        f"the YAML file, or one variable per name ({variable}__NAME=value)"
    )


def read_token_file(key: str, path: Path) -> SecretStr | None:
    """The token in ``path``; None when the file holds only blanks."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidSetting(
            key,
            f"cannot read {path} ({reason}); point it at a readable file holding the token",
        ) from None
    try:
        return presentable_token(value)
    except ValueError as exc:
        raise InvalidSetting(key, f"{path}: {exc}") from None


def check_private_file(what: str, path: Path, missing: str) -> None:
    """Refuse a secret's file that group or others can read (production's rule)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        raise SettingsError(missing) from None
    if stat.S_IMODE(mode) & 0o077:
        raise SettingsError(f"{what} {path} has mode {stat.S_IMODE(mode):o}; run: chmod 600 {path}")


def config_path() -> Path | None:
    explicit = os.environ.get("ERS_CONFIG")
    if explicit:
        path = Path(explicit)
        if path.is_dir():
            raise SettingsError(
                f"ERS_CONFIG: {path} is a directory; point it at the YAML file itself"
            )
        if not path.is_file():
            raise SettingsError(f"ERS_CONFIG: no such file {path}; fix the path or unset it")
        check_yaml(path)
        return path
    default = Path("ers.yaml")
    if default.is_file():
        check_yaml(default)
        return default
    return None


def check_yaml(path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise SettingsError(
            f"{path}: cannot read it ({exc.strerror}); let the user running ERS read it, "
            "or point ERS_CONFIG at another file"
        ) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        duplicate = _duplicate_key(root)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML {yaml_error_where(exc)}") from None
    except (yaml.YAMLError, RecursionError) as exc:  # RecursionError: an anchor inside itself
        raise SettingsError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if duplicate is not None:
        # YAML keeps the last of two equal keys silently: a second agent would replace one.
        key, first, second = duplicate
        raise SettingsError(
            f"invalid setting '{key}': written twice in {path} (lines {first} and {second}); "
            "keep one, or give the second its own name"
        )
    if (unquoted := _name_read_as_no_text(root)) is not None:
        section, written, line, kind = unquoted
        raise SettingsError(
            f"invalid setting '{section}': the name {written} (line {line} of {path}) is read "
            f"by YAML as {kind}, not as a name; write it in quotes: '{written}'"
        )
    if data is not None and not isinstance(data, dict):
        raise SettingsError(f"{path}: the top level must be a mapping of setting names")
    for key in data or {}:
        if not isinstance(key, str):
            raise SettingsError(
                f"{path}: {key!r} at the top level is not a setting name; "
                "write setting names there (max_backups: 5)"
            )


# The settings whose keys are names (of agents, of intents), and how YAML reads a bare word
# that is no text: an agent named yes, off or null was said as "agents.1.[key]" otherwise.
NAMED_SECTIONS = ("agents", "agent_routes", "agent_breakers")
_NOT_TEXT = {
    "tag:yaml.org,2002:bool": "true or false",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
}


def _name_read_as_no_text(root: yaml.Node | None) -> tuple[str, str, int, str] | None:
    """The first name in NAMED_SECTIONS that YAML reads as no text: (section, as written,
    line, what YAML reads it as)."""
    if not isinstance(root, yaml.MappingNode):
        return None
    for key_node, value_node in root.value:
        if key_node.value not in NAMED_SECTIONS or not isinstance(value_node, yaml.MappingNode):
            continue
        for name_node, _ in value_node.value:
            if (kind := _NOT_TEXT.get(name_node.tag)) is not None:
                written = name_node.value or "(nothing)"
                return key_node.value, written, name_node.start_mark.line + 1, kind
    return None


def _duplicate_key(node: yaml.Node, path: tuple[str, ...] = ()) -> tuple[str, int, int] | None:
    """The first key written twice in one mapping: (dotted key, first line, second line)."""
    children: list[tuple[str, yaml.Node]] = []
    if isinstance(node, yaml.SequenceNode):
        children = [(str(index), item) for index, item in enumerate(node.value)]
    elif isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in lines and key != "<<":
                return ".".join((*path, key)), lines[key], line
            lines[key] = line
            if value_node is not node:  # an alias of itself is walked once
                children.append((key, value_node))
    return next(filter(None, (_duplicate_key(n, (*path, k)) for k, n in children)), None)


# ERS_ variables read elsewhere, none a setting of the service: by the command line
# (ERS_URL), for the settings file (ERS_CONFIG), and by the tests (ERS_TEST_DATABASE_URL,
# README "Set up"; ERS_LONG_TESTS, ERS_FUZZ_EXAMPLES and every ERS_TEST_ one, which a test
# run's environment hands to the production service its tests start).
NOT_SETTINGS = frozenset({"ERS_URL", "ERS_CONFIG", "ERS_TEST_DATABASE_URL"})
TESTS_VARIABLES = frozenset({"ERS_LONG_TESTS", "ERS_FUZZ_EXAMPLES"})
TESTS_PREFIX = "ERS_TEST_"


def unknown_variables(environ: Mapping[str, str], fields: Iterable[str]) -> list[str]:
    """One line per ``ERS_`` variable that names no setting (a misspelt one is otherwise
    ignored without a word), with the nearest setting's variable when one is close. The same
    line is logged where the variable is ignored and joined into production's refusal, so
    whoever looks for it finds it in either."""
    known = sorted(f"ERS_{name.upper()}" for name in fields)
    lines = []
    for variable in sorted(environ):
        top = variable.upper().split("__", 1)[0]
        if not top.startswith("ERS_") or variable in NOT_SETTINGS or top in known:
            continue
        if variable in TESTS_VARIABLES or variable.startswith(TESTS_PREFIX):
            continue
        close = difflib.get_close_matches(top, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"{variable} names no setting and is ignored{hint}")
    return lines
