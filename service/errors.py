"""Exceptions named for what went wrong, shared by agents, guards and routes."""

from __future__ import annotations


class ErsError(Exception):
    """Base of the errors ERS raises on purpose."""


class UserInputError(ErsError):
    """The user's request cannot be served as given; never counts against a breaker."""


class StoreUnavailable(ErsError):
    """A state store could not be read or written (disk, lock, paused for a rollback)."""

    def __init__(self, component: str, reason: str) -> None:
        super().__init__(f"the {component} store is unavailable: {reason}")
        self.component = component
        self.reason = reason


class StatementRefused(StoreUnavailable):
    """PostgreSQL refused a statement (a value it cannot store, a broken constraint) and
    rolled it back: unlike a lost connection, it is known that nothing of it committed."""


class DependencyError(ErsError):
    """Something an agent depends on failed; recoverable, counts against the breaker."""


class AgentFailure(ErsError):
    """An agent failed while processing a request."""


class UnknownAgent(ErsError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no agent named '{name}'; known agents: {', '.join(known)}")
        self.name = name
