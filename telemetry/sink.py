"""What the incident pipeline hands its sink (the incident store): classified error spans,
this process's and, by the request they came in, other services'.

A sender that got no answer (the process was killed after the write, the answer took too
long, the balancer gave up) sends the same request again, perhaps to a restarted process or
to another replica. Each request carries a key made of its spans' ids (``sent_key``), which
the sink remembers with what it wrote, so that a request sent again is not counted again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from telemetry.classifier import Classification
from telemetry.span_record import SpanRecord

# Other services' spans of one batch, by request: its key (None: not told) and its spans.
Sent = Sequence[tuple[int | None, Sequence[tuple[SpanRecord, Classification]]]]


class ClassifiedSink(Protocol):
    """Where classified error spans go: one call writes a batch at once and returns what it
    did (the incident store returns one outcome per incident touched)."""

    def record_errors(
        self, items: Sequence[tuple[SpanRecord, Classification]], sent: Sent = ()
    ) -> Sequence[Any]:
        """``sent``: other services' spans, by the request they came in (its ``sent_key``
        and its classified spans), written after ``items``. A request written before is
        not written again: a sender resends what it got no answer for, perhaps to a
        restarted process or another replica."""
        ...


Subscriber = Callable[[Any], None]  # receives each outcome the sink returned
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16  # OTLP's invalid ids


def sent_key(records: Sequence[SpanRecord]) -> int | None:
    """The ids of spans sent together, as one signed 64-bit number (what either engine
    keys fastest): a sender sending them again (it got no answer) sends the same ids, and
    two other requests share one key in about one case in 10^13 among a storm's keys of
    15 minutes. None when some span has no valid ids (none, or the invalid all-zero ones):
    then nothing tells a request sent again."""
    ids = [record.trace_id + record.span_id for record in records]
    for record in records:
        trace, span = record.trace_id, record.span_id
        if not trace or not span or trace == _NO_TRACE or span == _NO_SPAN:
            return None
    if not ids:
        return None
    digest = hashlib.blake2b("".join(ids).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
