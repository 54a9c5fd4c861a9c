"""The span event for an exception, without formatting the same traceback over and over.

The SDK's ``record_exception`` formats the full traceback each time, and Python 3.11's
formatting reads and compiles source lines to place its carets: a few hundred microseconds
per failure, paid on the request path in exactly the moment (an error storm) when the
service can least afford it. The frames part of a traceback is the same for every failure
that took the same path, so it is formatted once per path and reused; the exception's own
line is formatted each time, so the message is always the current one.
"""

from __future__ import annotations

import traceback
from collections import OrderedDict
from typing import Any

from opentelemetry.trace import Span

from telemetry.redaction import redacted_text

# The attribute that lets classification rules match a family of errors ("any
# DependencyError"), not only the exact class; read back from span records.
from telemetry.span_record import EXCEPTION_BASES_ATTRIBUTE

__all__ = [
    "EXCEPTION_BASES_ATTRIBUTE",
    "exception_bases",
    "record_exception",
    "record_failure",
    "stacktrace",
]

_MAX_PATHS = 1024
_frames_by_path: OrderedDict[tuple[Any, ...], str] = OrderedDict()


def _path(exc: BaseException) -> tuple[Any, ...] | None:
    """The exception's type and the code locations it passed, or None when it is chained
    (its context would belong in the text too)."""
    if exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        return None
    frames = tuple(
        (frame.f_code.co_filename, frame.f_code.co_name, lineno)
        for frame, lineno in traceback.walk_tb(exc.__traceback__)
    )
    return (type(exc), frames)


def stacktrace(exc: BaseException) -> str:
    path = _path(exc)
    if path is None:
        return "".join(traceback.format_exception(exc))
    frames = _frames_by_path.get(path)
    if frames is None:
        frames = "Traceback (most recent call last):\n" + "".join(
            traceback.format_tb(exc.__traceback__)
        )
        _frames_by_path[path] = frames
        if len(_frames_by_path) > _MAX_PATHS:
            _frames_by_path.popitem(last=False)
    return frames + _last_line(exc)


def _last_line(exc: BaseException) -> str:
    """``traceback.format_exception_only`` for the common case (``module.Type: message``)
    without building a ``TracebackException``; the library's own for what it words
    differently (syntax errors, exception groups, notes, a message that cannot be read)."""
    kind = type(exc)
    if issubclass(kind, SyntaxError | BaseExceptionGroup) or getattr(exc, "__notes__", None):
        return "".join(traceback.format_exception_only(exc))
    try:
        message = str(exc)
    except Exception:
        return "".join(traceback.format_exception_only(exc))
    module = kind.__module__
    name = (
        kind.__qualname__ if module in ("__main__", "builtins") else f"{module}.{kind.__qualname__}"
    )
    return f"{name}: {message}\n" if message else f"{name}\n"


def exception_message(exc: BaseException) -> str:
    """``str(exc)``, or the traceback module's words when that raises: an agent (the
    operator's own code) may raise an exception that cannot be printed, and saying so must
    not raise in its place."""
    try:
        return str(exc)
    except Exception:
        return "<exception str() failed>"


def described(exc: BaseException) -> str:
    """``Name: message`` (the name alone without a message), for a status or a log line,
    its secrets redacted: an agent's error may quote the URL or the conninfo it failed on,
    password and all, and these words reach a breaker's ``lastError``, a refused reset, the
    system test's steps and the log, which an operator reads as they read an incident."""
    message = exception_message(exc)
    return redacted_text(f"{type(exc).__name__}: {message}") if message else type(exc).__name__


def exception_bases(exc: BaseException) -> list[str]:
    return [cls.__name__ for cls in type(exc).__mro__[1:] if cls not in (object, BaseException)]


def record_failure(span: Span, exc: BaseException) -> None:
    """``exc`` as the failure a span reports: its event, ``error.type`` and its bases, which
    the classification rules read; the same failure reported by two spans (a health check's,
    a request's) is then classified alike, one incident."""
    record_exception(span, exc, {})
    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_attribute(EXCEPTION_BASES_ATTRIBUTE, exception_bases(exc))


def record_exception(span: Span, exc: BaseException, attributes: dict[str, Any]) -> None:
    """What ``span.record_exception`` records (OTel semantic conventions), more cheaply; an
    exception whose ``str()`` raises is recorded too, where the SDK's would raise."""
    kind = type(exc)
    module = kind.__module__
    name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    message = exception_message(exc)
    span.add_event(
        "exception",
        {
            "exception.type": name,
            "exception.message": message,
            "exception.stacktrace": stacktrace(exc),
            "exception.escaped": "False",
            **attributes,
        },
    )
