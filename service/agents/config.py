"""The team from the settings: each agent of ``agents:`` checked, loaded and built.

A Python agent is a factory named by import path (``package.module:factory``) or by an
entry point of the group ``ers.agents``; it takes the agent's name and the stores and returns
an ``Agent``. A remote agent is ``service.agents.remote.RemoteAgent``. Every mistake (an
unknown kind, a factory that does not import, a route or a fallback naming no agent) is a
``SettingsError`` of one line naming the setting, found before the service starts.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from opentelemetry.trace import TracerProvider
from pydantic import TypeAdapter, ValidationError

from service.agents.base import ALIASES, Agent
from service.agents.router import INTENTS
from service.agents.specs import AgentSpec, HttpAgentSpec, PythonAgentSpec
from service.settings import COMPONENTS, Environment, Settings, SettingsError
from service.settings_errors import told_mistake
from service.stores import Stores
from telemetry.exception_events import described
from telemetry.redaction import is_secret_name

ENTRY_POINT_GROUP = "ers.agents"
# The router is the team's own; the seed's aliases (npa, ...) already name built-in agents.
RESERVED_NAMES = frozenset({"router", *ALIASES})
# ERS's own components, as its incidents name them: an agent of one of these names would be
# isolated for their failures (an outage of the budgets store, of the backups, ...).
OWN_COMPONENTS = frozenset(
    {*COMPONENTS, "incidents", "alerts", "audit", "backups", "intake", "system-test"}
    | {"fleet", "system", "core", "ers"}
)
# An agent's name goes into span names, metric labels and URLs.
AGENT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")

AgentFactory = Callable[[str, Stores], Agent]

EXAMPLE_URL = "http://127.0.0.1:8600/chat"
# What a required key of an agent holds, for the message that says it is missing.
_NEEDED = {
    "url": f"the agent's address, e.g. {EXAMPLE_URL}",
    "factory": "package.module:factory or the name of an entry point",
}

_SPEC: TypeAdapter[AgentSpec] = TypeAdapter(AgentSpec)
KINDS = ("python", "http")


class FactoryFailed(SettingsError):
    """A Python agent's factory did not give a usable agent; ``problem`` says why and what
    to do, without the setting's name the message leads with, for a caller (a restart) that
    tells it in words of its own."""

    def __init__(self, name: str, problem: str) -> None:
        self.key = f"agents.{name}.factory"
        self.problem = problem
        super().__init__(f"invalid setting '{self.key}': {problem}")


@dataclass(frozen=True)
class TeamConfig:
    """The checked ``agents:`` (in the settings' order), and the agent of each routed intent:
    ``agent_routes``, else the agent named like the intent."""

    specs: Mapping[str, AgentSpec]
    routes: Mapping[str, str]
    # The Python agents' factories, resolved (imported) while checking.
    factories: Mapping[str, AgentFactory]


def load_team_config(settings: Settings) -> TeamConfig:
    """Check the team's settings and import every Python agent's factory; SettingsError
    names the first thing wrong and what to do."""
    specs = {name: parse_spec(name, raw) for name, raw in settings.agents.items()}
    if not specs:
        raise SettingsError(
            "invalid setting 'agents': the team has no agent; list at least one, or remove "
            "the key for the built-in nutrition, workout and budget agents"
        )
    known = ", ".join(specs)
    for name, spec in specs.items():
        for position, other in enumerate(spec.fallbacks):
            key = f"agents.{name}.fallbacks.{position}"
            if other == name:
                raise SettingsError(f"invalid setting '{key}': '{name}' cannot fall back to itself")
            if other in spec.fallbacks[:position]:
                # It would be asked twice in one chat, each time with its own retries.
                raise SettingsError(
                    f"invalid setting '{key}': '{other}' is already in the list; name it once"
                )
            if other not in specs:
                raise SettingsError(
                    f"invalid setting '{key}': no agent named '{other}'; use one of {known}"
                )
    routes = {intent: intent for intent in INTENTS if intent in specs}
    for intent, agent in settings.agent_routes.items():
        if intent not in INTENTS:
            raise SettingsError(
                f"invalid setting 'agent_routes.{intent}': the router has no such intent; "
                f"use one of {', '.join(INTENTS)}"
            )
        if agent is None:
            routes.pop(intent, None)
            continue
        if agent not in specs:
            raise SettingsError(
                f"invalid setting 'agent_routes.{intent}': no agent named '{agent}'; "
                f"use one of {known}"
            )
        routes[intent] = agent
    factories = {
        name: resolve_factory(name, spec.factory)
        for name, spec in specs.items()
        if isinstance(spec, PythonAgentSpec)
    }
    return TeamConfig(specs, routes, factories)


def parse_spec(name: str, raw: Any) -> AgentSpec:
    if not isinstance(name, str) or not AGENT_NAME.fullmatch(name):
        raise SettingsError(
            f"invalid setting 'agents.{name}': an agent's name is lowercase letters, digits, "
            "'_' and '-', starting with a letter, at most 63 characters"
        )
    if name in RESERVED_NAMES:
        raise SettingsError(
            f"invalid setting 'agents.{name}': the name '{name}' is reserved; choose another"
        )
    if name in OWN_COMPONENTS:
        raise SettingsError(
            f"invalid setting 'agents.{name}': '{name}' names a component of ERS itself, and "
            f"its incidents would isolate the agent; choose another name (e.g. {name}-agent)"
        )
    if not isinstance(raw, Mapping):
        raise SettingsError(
            f"invalid setting 'agents.{name}': a mapping with kind: python (and factory) or "
            "kind: http (and url)"
        )
    if raw.get("kind") not in KINDS:
        got = "missing" if "kind" not in raw else f"'{raw['kind']}' is not a kind of agent"
        raise SettingsError(
            f"invalid setting 'agents.{name}.kind': {got}; use python (with factory: "
            "package.module:factory or an entry point) or http (with url)"
        )
    try:
        return _SPEC.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"][1:])
        if first["type"] == "extra_forbidden":
            problem = _unknown_key(field, raw["kind"])
        elif first["type"] == "missing":
            needed = _NEEDED.get(field, "write it")
            problem = f"missing; kind {raw['kind']} needs {field}, {needed}"
        elif first["type"] == "tuple_type":
            problem = "not a list; write the agents' names as one, e.g. [workout]"
        else:
            spec = HttpAgentSpec if raw["kind"] == "http" else PythonAgentSpec
            problem = told_mistake(first, spec.model_fields.get(field))
            if first["type"] in ("url_parsing", "url_scheme", "url_type"):
                problem += f"; write the whole URL with its scheme, e.g. {EXAMPLE_URL}"
        key = f"agents.{name}.{field}" if field else f"agents.{name}"
        raise SettingsError(f"invalid setting '{key}': {problem}") from None


def _unknown_key(key: str, kind: str) -> str:
    """What to write instead of an unknown key of an agent of ``kind``: the nearest key it
    takes, else every key it takes."""
    spec = PythonAgentSpec if kind == "python" else HttpAgentSpec
    keys = sorted(set(spec.model_fields) - {"kind"})
    if kind == "http" and (is_secret_name(key) or key.lower() in ("headers", "key", "auth")):
        return (
            "unknown key; an agent's credential goes in the file auth_file names (the whole "
            "value of its auth_header, e.g. 'Bearer <token>'), never in the settings"
        )
    if near := difflib.get_close_matches(key, keys, n=1, cutoff=0.75):
        return f"unknown key; did you mean {near[0]}?"
    return f"unknown key; check its spelling (kind {kind} takes {', '.join(keys)})"


def resolve_factory(name: str, reference: str) -> AgentFactory:
    """The callable that ``reference`` names: ``package.module:factory``, or an entry point
    of the group ``ers.agents``."""
    key = f"agents.{name}.factory"
    if ":" not in reference:
        found = entry_points(group=ENTRY_POINT_GROUP, name=reference)
        if not found:
            installed = ", ".join(sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)))
            raise SettingsError(
                f"invalid setting '{key}': no entry point '{reference}' in the group "
                f"'{ENTRY_POINT_GROUP}' (installed: {installed or 'none'}); install the package "
                "that provides it, or write an import path as package.module:factory"
            )
        try:
            loaded = next(iter(found)).load()
        except (Exception, SystemExit) as exc:
            raise SettingsError(
                f"invalid setting '{key}': the entry point '{reference}' does not load "
                f"({described(exc)})"
            ) from None
        return _callable(key, reference, loaded)
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise SettingsError(f"invalid setting '{key}': '{reference}' is not package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and not _names_the_module(module_name, exc.name):
            # The module was found; a library it imports was not. A path is not the cause.
            raise SettingsError(
                f"invalid setting '{key}': '{module_name}' imports '{exc.name}', which ERS's "
                "environment does not have; install the package that provides it into that "
                f"environment ({sys.executable} -m pip install ...)"
            ) from None
        raise SettingsError(
            f"invalid setting '{key}': cannot import '{module_name}' ({exc}); install it "
            "into ERS's environment, or put the folder that holds it on PYTHONPATH "
            "(PYTHONPATH=. ers serve for one in the current folder), or fix the module path"
        ) from None
    except (Exception, SystemExit) as exc:  # a module that exits when it lacks something
        raise SettingsError(
            f"invalid setting '{key}': importing '{module_name}' failed ({described(exc)})"
        ) from None

    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise SettingsError(
                f"invalid setting '{key}': module '{module_name}' has no '{attribute}'"
            )
    return _callable(key, reference, target)


def _names_the_module(module_name: str, missing: str) -> bool:
    """Whether the module not found is ``module_name`` or a package holding it."""
    return module_name == missing or module_name.startswith(f"{missing}.")


def _callable(key: str, reference: str, target: Any) -> AgentFactory:
    if not callable(target):
        raise SettingsError(
            f"invalid setting '{key}': '{reference}' is a {type(target).__name__}, not a "
            "factory; name a callable taking (name, stores)"
        )
    return target  # type: ignore[no-any-return]


def build_agent(
    name: str,
    spec: AgentSpec,
    config: TeamConfig,
    stores: Stores,
    settings: Settings,
    tracer_provider: TracerProvider | None = None,
) -> Agent:
    """One agent of the team, as its spec says; FactoryFailed when a factory fails. A remote
    agent's client records each attempt as a span of ``tracer_provider`` (the service's)."""
    if isinstance(spec, HttpAgentSpec):
        # Imported here: a team of Python agents does not load the HTTP client.
        from service.agents.remote import RemoteAgent

        return RemoteAgent(
            name,
            spec,
            default_timeout_s=settings.agent_timeout_s,
            tracer_provider=tracer_provider,
            private_auth_file=settings.env is Environment.PRODUCTION,
        )
    factory = config.factories[name]
    if problem := _takes_name_and_stores(factory):
        raise FactoryFailed(
            name,
            f"'{spec.factory}' cannot be called as the factory is, "
            f"with the agent's name and the stores, factory(name, stores): {problem}",
        )
    try:
        agent = factory(name, stores)
    except BaseException as exc:  # sys.exit("...") in a factory: the same mistake
        # A plain call, so nothing cancels it from outside: a KeyboardInterrupt is the
        # factory's own, which passed up through the lifespan as a wall of traceback, exit 3.
        raise FactoryFailed(
            name, f"'{spec.factory}' failed building agent '{name}' ({described(exc)})"
        ) from None
    if inspect.iscoroutine(agent):
        agent.close()  # never to be awaited: no "coroutine was never awaited" warning
        raise FactoryFailed(
            name,
            f"'{spec.factory}' is an async function; the factory is "
            "called (at start-up, and again by a restart), not awaited: make it a plain def",
        )
    if not isinstance(agent, Agent):
        raise FactoryFailed(
            name,
            f"'{spec.factory}' returned a {type(agent).__name__}, "
            "not an agent; return an object with a name and an async handle(request)",
        )
    handle = inspect.unwrap(agent.handle)
    if inspect.isroutine(handle) and not inspect.iscoroutinefunction(handle):
        # Its reply cannot be awaited: every call would fail, found by the users only.
        raise FactoryFailed(
            name,
            f"'{spec.factory}' returned an agent whose handle is a "
            "plain def; write it as async def handle(self, request)",
        )
    guidance = getattr(agent, "guidance", None)
    if guidance is not None and not (isinstance(guidance, str) and guidance.strip()):
        # The last fallback's reply: one that is no text would fail the router's guard in
        # turn, and open the router's breaker for every chat.
        what = "empty" if isinstance(guidance, str) else f"a {type(guidance).__name__}"
        raise FactoryFailed(
            name,
            f"'{spec.factory}' returned an agent whose guidance is "
            f"{what}, not text; make it a string (a trailing comma makes a tuple), or leave "
            "it out",
        )
    if agent.name != name:
        raise FactoryFailed(
            name,
            f"'{spec.factory}' returned an agent named "
            f"'{agent.name}' for '{name}'; give it the name the factory is called with",
        )
    return agent


def _takes_name_and_stores(factory: Callable[..., object]) -> str | None:
    """Why ``factory`` cannot take (name, stores), or None: called so, its TypeError named
    neither what ERS passes nor why."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (a builtin): the call will tell
        return None
    try:
        signature.bind("name", "stores")
    except TypeError as exc:
        return f"{exc} (its signature is {signature})"
    return None
