"""The responder's restart_agent: a Python agent's factory called again, off the event loop.

A factory may take seconds (a model to load, a connection to open); called on the loop, it
held every request of the service until it returned. It runs in a thread instead, and the
instance in place answers until the new one is ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service.agents.base import Agent
from service.agents.config import FactoryFailed, TeamConfig, build_agent
from service.agents.specs import AgentSpec, PythonAgentSpec
from service.errors import AgentRestartFailed
from service.settings import Settings
from service.stores import Stores


def rebuilder(
    name: str, spec: AgentSpec, config: TeamConfig, stores: Stores, settings: Settings
) -> Callable[[], Agent] | None:
    """What the responder's restart calls: a Python agent's factory again. A remote agent
    is not rebuilt: a new client would leave the old one's connections open."""
    if not isinstance(spec, PythonAgentSpec):
        return None

    def rebuild() -> Agent:
        try:
            return build_agent(name, spec, config, stores, settings)
        except FactoryFailed as exc:  # the settings were good at start: the factory fails now
            raise not_restarted(name, exc.problem) from None

    return rebuild


def not_restarted(name: str, why: str) -> AgentRestartFailed:
    return AgentRestartFailed(
        f"agent '{name}' was not restarted and its instance answers on: {why}"
    )


async def built_off_loop(
    name: str,
    factory: Callable[[], Agent],
    unused: Callable[[Agent], None],
    running: dict[str, asyncio.Future[Agent]],
) -> Agent:
    """``factory()``, run in a thread (``asyncio.to_thread``: one still running at shutdown
    is left behind as any other). No cancellation stops a thread: when the wait for it is
    cancelled (the action's time limit, the service stopping), the instance it goes on to
    build is handed to ``unused``, to be closed rather than left holding what it opened.

    One build of agent ``name`` at a time (``running`` holds those under way): a factory that
    never returns, restarted again and again, held one more thread of the loop's executor
    each time, until every ``asyncio.to_thread`` of the service waited behind them."""
    if name in running:
        raise not_restarted(
            name, "the factory has not yet returned the instance an earlier restart asked for"
        )
    building = running[name] = asyncio.ensure_future(asyncio.to_thread(factory))
    building.add_done_callback(lambda _: running.pop(name, None))
    try:
        return await asyncio.shield(building)
    except asyncio.CancelledError:
        building.add_done_callback(lambda built: _hand_on(built, unused))
        raise


def _hand_on(built: asyncio.Future[Agent], unused: Callable[[Agent], None]) -> None:
    if not built.cancelled() and built.exception() is None:  # a failure: nothing to close
        unused(built.result())
