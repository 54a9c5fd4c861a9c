"""Uptime in the seed's words: "4 days, 12 hours"."""

from __future__ import annotations


def _unit(value: int, word: str) -> str:
    return f"{value} {word}{'' if value == 1 else 's'}"


def describe_uptime(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{_unit(days, 'day')}, {_unit(hours, 'hour')}"
    if hours:
        return f"{_unit(hours, 'hour')}, {_unit(minutes, 'minute')}"
    if minutes:
        return f"{_unit(minutes, 'minute')}, {_unit(secs, 'second')}"
    return _unit(secs, "second")
