"""A connection of the fleet that fails is logged once, and its recovery once, not on every
retry."""

from __future__ import annotations

import logging

log = logging.getLogger("ers.fleet")


class Outage:
    """Logs a failing connection once, and its recovery once."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failing = False

    def failed(self, reason: str, retry_s: float) -> None:
        if not self.failing:
            self.failing = True
            log.warning(
                "fleet breaker overrides: %s failed (%s); retrying at most %g s apart, "
                "local breakers keep working meanwhile",
                self.what,
                reason,
                retry_s,
            )

    def recovered(self) -> None:
        if self.failing:
            self.failing = False
            log.info("fleet breaker overrides: %s works again", self.what)
