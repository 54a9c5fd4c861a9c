"""What holds a circuit breaker open: the open period after a trip, which backs off on each
failed trial, or a forcing by an operator or an alert."""

from __future__ import annotations

from dataclasses import dataclass

from service.resilience.breaker_config import BreakerConfig
from service.resilience.breaker_events import iso_utc

# The longest forcing an operator may ask for at once: a week.
MAX_FORCE_OPEN_S = 7 * 24 * 3600


class OpenPeriod:
    """When a tripped breaker admits its next trial. The first trip holds it open for
    ``open_duration_s``; each later one (a failed trial) for longer by
    ``open_backoff_multiplier``, up to ``max_open_duration_s``; ``clear`` starts over."""

    def __init__(self, config: BreakerConfig) -> None:
        self._config = config
        self.clear()

    def clear(self) -> None:
        self.trips = 0
        self.duration_s = self._config.open_duration_s
        self.opened_at_wall: float | None = None
        self.next_attempt_at = 0.0
        self.reason = ""

    def trip(self, now: float, wall: float, reason: str) -> None:
        config = self._config
        self.trips += 1
        if self.trips > 1:
            self.duration_s = min(
                config.max_open_duration_s, self.duration_s * config.open_backoff_multiplier
            )
        self.opened_at_wall = wall
        self.next_attempt_at = now + self.duration_s
        self.reason = reason

    def retry_after(self, now: float) -> float:
        return max(0.0, self.next_attempt_at - now)

    def rejection(self, name: str, now: float) -> tuple[float, str]:
        """When to try again, and why a call is turned away now."""
        retry_after = self.retry_after(now)
        why = (
            f"breaker '{name}' is open ({self.reason}); "
            f"the next trial call is admitted in {retry_after:.1f} s"
        )
        return retry_after, why

    def next_attempt_wall(self) -> float | None:
        return None if self.opened_at_wall is None else self.opened_at_wall + self.duration_s


@dataclass(frozen=True, slots=True)
class Forcing:
    """Who holds a breaker forced open, why, and until when (monotonic and wall time); and
    the incident it isolates the agent for, when the responder or an alert forced it for one
    (a call turned away by it names that incident). ``since``: the wall-clock time the
    isolation began, kept through renewals and restarts."""

    reason: str
    source: str
    expires_at: float | None
    expires_at_wall: float | None
    since: float
    incident: str | None = None

    @classmethod
    def until(
        cls,
        reason: str,
        source: str,
        ttl_s: float | None,
        until: float | None,
        now: float,
        wall: float,
        incident: str | None = None,
        since: float | None = None,
    ) -> Forcing:
        """Held ``ttl_s`` seconds from now, until the wall-clock time ``until``, or (neither)
        until released; begun at ``since``, else now. ValueError says what is wrong."""
        if not reason or not source:
            raise ValueError(
                "force_open needs a reason and a source, so the history says who held the "
                "breaker open and why"
            )
        if until is not None:
            if ttl_s is not None:
                raise ValueError("give force_open either ttl_s or until, not both")
            ttl_s = until - wall
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
        since = wall if since is None else since
        if ttl_s is None:
            return cls(reason, source, None, None, since, incident)
        expires_wall = wall + ttl_s if until is None else until
        return cls(reason, source, now + ttl_s, expires_wall, since, incident)

    def remaining(self, now: float) -> float | None:
        """Seconds until it expires, None when it lasts until released."""
        return None if self.expires_at is None else max(0.0, self.expires_at - now)

    def rejection(self, name: str, now: float) -> tuple[float | None, str]:
        """When to try again (None: once released), and why a call is turned away now."""
        retry_after = self.remaining(now)
        until = "it is released" if retry_after is None else f"{retry_after:.1f} s from now"
        why = f"breaker '{name}' is forced open by {self.source} ({self.reason}) until {until}"
        return retry_after, why

    def said(self, name: str, now: float, renewed: bool = False) -> str:
        """The reply to whoever forced the breaker open (or forced it again, ``renewed``)."""
        remaining = self.remaining(now)
        span = "until released" if remaining is None else f"for {remaining:g} s"
        held = "stays" if renewed else "is"
        return f"breaker '{name}' {held} forced open by {self.source} {span}: {self.reason}"

    def to_dict(self) -> dict[str, str | None]:
        return {
            "reason": self.reason,
            "source": self.source,
            "expiresAt": iso_utc(self.expires_at_wall),
        }


def trial_rejection(
    name: str, in_flight: int, first_started_at: float | None, wait_s: float, now: float
) -> tuple[float | None, str]:
    """Why a half-open breaker turns a call away, and when to retry: its trial calls are in
    flight here, or (none here) a trial gate held the call back for another replica's."""
    if first_started_at is None:
        return None, (
            f"breaker '{name}' is half-open and its trial call runs on another replica; "
            "it closes here once that call succeeds"
        )
    retry_after = max(0.0, first_started_at + wait_s - now)
    return retry_after, (
        f"breaker '{name}' is half-open and its {in_flight} trial call(s) "
        f"are in flight; retry in {retry_after:.1f} s"
    )
