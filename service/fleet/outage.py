"""A connection of the fleet that fails is logged once, and its recovery once, not on every
retry."""

from __future__ import annotations

import logging

log = logging.getLogger("ers.fleet")


class Outage:
    """Logs a failing connection once, and its recovery once."""

    def __init__(
        self,
        what: str,
        *,
        subject: str = "fleet breaker overrides",
        meanwhile: str = "local breakers keep working meanwhile",
    ) -> None:
        self.what = what
        self.subject = subject
        self.meanwhile = meanwhile
        self.failing = False

    def failed(self, reason: str, retry_s: float) -> None:
        if not self.failing:
            self.failing = True
            log.warning(
                "%s: %s failed (%s); retrying at most %g s apart, %s",
                self.subject,
                self.what,
                reason,
                retry_s,
                self.meanwhile,
            )

    def recovered(self) -> None:
        if self.failing:
            self.failing = False
            log.info("%s: %s works again", self.subject, self.what)
