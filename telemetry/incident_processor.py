"""The span processor that turns error spans into incidents, off the request path.

``on_end`` checks the span's status and returns at once unless it is ERROR; an error span is
appended to a bounded queue (a full queue drops it and counts the drop, never blocks).
``submit_records`` queues the error spans of one OTLP request together and tells, through a
future, whether they were written, so the intake answers only once they are. One
worker thread takes batches from the queue, classifies each span, writes the batch through the
store in one transaction and publishes what happened to subscribers.

Once woken, the worker lingers briefly (``linger_s``, or until a batch is full or a flush is
asked for) so that a storm is written in a few large transactions instead of one per failure:
a transaction per span would cost the request path more CPU than the failures themselves.

The processor knows nothing of incidents themselves: it hands each batch of classified records
to its sink (``telemetry.sink.ClassifiedSink``, the incident store), other services' by the
request they came in, and passes what the sink returns, one outcome per incident touched, to
its subscribers as it is. Subscribers are called on the worker thread, one outcome per
incident touched per batch (not one per failure: a storm of one error is one "updated"
outcome per batch with its occurrence count).
A subscriber must be quick and must not block; to reach an event loop it should hand over with
``loop.call_soon_threadsafe``. A subscriber that raises is logged and never stops the worker.

Through an outage of the store (``outages``: its database down, a full disk), this process's
own error spans are held, classified, up to ``hold_max``, and written with the next batch or
within ``retry_s`` once the store takes them: they were the only record of what failed
during the outage (the intake's senders are told and send theirs again). Written late, each
carries ``ers.held_s``, the seconds it waited, so that nothing acts on it as on a new
failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

from telemetry.classifier import Classification, Classifier
from telemetry.enclosing import EnclosingFailures
from telemetry.sink import ClassifiedSink, Sent, Subscriber, sent_key
from telemetry.span_record import SpanRecord

log = logging.getLogger("ers.incidents")
ERROR = StatusCode.ERROR


def server_span_of(routes: Iterable[str]) -> Callable[[ReadableSpan], bool]:
    """True for a server span whose ``http.route`` is one of ``routes``: an ``ignore`` for
    the health endpoints, which answer 5xx to report a failure found elsewhere (the server
    span is marked an error), where the failure itself is reported where it was found."""
    wanted = frozenset(routes)

    def matches(span: ReadableSpan) -> bool:
        if span.kind is not SpanKind.SERVER:
            return False
        return (span.attributes or {}).get("http.route") in wanted

    return matches


class _FlushMarker(threading.Event):
    """Put in the queue; set by the worker once everything before it is written."""


class SubmissionRefused(Exception):
    """Submitted records were not queued; the message says why (a full queue, a stop)."""


class _Submitted:
    """Records from elsewhere, written in one transaction; ``written`` says how it went."""

    __slots__ = ("records", "written")

    def __init__(self, records: list[SpanRecord]) -> None:
        self.records = records
        self.written: Future[bool] = Future()


class IncidentProcessor(SpanProcessor):
    """Swap rules at run time by assigning ``processor.classifier``; the worker picks the new
    one up at its next batch."""

    def __init__(
        self,
        store: ClassifiedSink,
        classifier: Classifier,
        *,
        queue_size: int = 10_000,
        batch_size: int = 1_000,
        idle_wait_s: float = 0.5,
        linger_s: float = 0.05,
        ignore: Callable[[ReadableSpan], bool] | None = None,
        outages: tuple[type[Exception], ...] = (),
        hold_max: int = 1_000,
        retry_s: float = 5.0,
    ) -> None:
        """``ignore``: error spans it returns True for are not incidents (e.g. the server
        span of a health endpoint reporting a failure with its status code). ``outages``:
        the store's errors that say in their message what is down (its database): logged
        in one line; a traceback per batch through an outage says nothing more."""
        self.store = store
        self._outages = outages
        self._ignore = ignore
        self.classifier = classifier
        self.queue_size = queue_size
        self.batch_size = batch_size
        self._idle_wait_s = idle_wait_s
        self._linger_s = linger_s
        # Set when the worker should stop lingering: a full batch, a flush, shutdown.
        self._hurry = threading.Event()
        self._queue: deque[ReadableSpan | _Submitted | _FlushMarker] = deque()
        self._wake = threading.Event()
        self._accepting = True
        self._exit = False
        self._dropped = 0
        # _Submitted items and their spans: put in by submitters (under _submit_lock) and
        # taken by the worker, each side counting its own, so the worker takes no lock.
        self._items_in = self._spans_in = self._items_out = self._spans_out = 0
        self._submit_lock = threading.Lock()
        self._drop_lock = threading.Lock()
        self._classified = 0
        self._failed = 0
        self._joined = 0
        self._enclosing = EnclosingFailures()
        self._subscriber_errors = 0
        self._subscribers: list[Subscriber] = []
        # Own error spans the store could not take through an outage, with when they ended.
        self._held: deque[tuple[SpanRecord, Classification]] = deque()
        self._hold_max, self._retry_s, self._retry_at = hold_max, retry_s, 0.0
        self._worker = threading.Thread(target=self._run, name="ers-incidents", daemon=True)
        self._worker.start()

    # -- counters (read by the service's observable metrics) ------------------------------

    @property
    def spans_classified(self) -> int:
        return self._classified

    @property
    def spans_dropped(self) -> int:
        return self._dropped

    @property
    def spans_joined(self) -> int:
        """Error spans of other services counted as the failure they enclose (see
        ``telemetry.enclosing``): kept in their trace, no occurrence of their own."""
        return self._joined

    @property
    def spans_failed(self) -> int:
        """Error spans taken from the queue but not written: one could not be classified,
        or the store raised (e.g. the disk is full)."""
        return self._failed

    # -- events ---------------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` for every incident event; returns a function that unsubscribes."""
        self._subscribers = [*self._subscribers, subscriber]

        def unsubscribe() -> None:
            self._subscribers = [s for s in self._subscribers if s is not subscriber]

        return unsubscribe

    # -- SpanProcessor --------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if span.status.status_code is not ERROR:
            return
        if self._ignore is not None and self._ignore(span):
            return
        self._enqueue(span)

    def submit_records(self, records: list[SpanRecord]) -> Future[bool]:
        """Queue error span records from elsewhere (the OTLP intake) to be written in one
        transaction. The future is True once they are written, False when the store could
        not write them (none of them is, they may be sent again); cancelled before the
        worker takes them, they are not written. Raises SubmissionRefused when the queue
        cannot take them all (a batch larger than the queue is taken when it is empty) or
        the processor is stopping: nothing of them is queued."""
        submitted = _Submitted([record for record in records if record.is_error])
        with self._submit_lock:
            if not self._accepting:
                raise SubmissionRefused("the incident pipeline is stopping")
            waiting = self._waiting()
            if waiting and waiting + len(submitted.records) > self.queue_size:
                raise SubmissionRefused(
                    f"the incident queue holds {waiting} error spans of {self.queue_size}"
                )
            self._items_in += 1
            self._spans_in += len(submitted.records)
            self._queue.append(submitted)
            full = waiting + len(submitted.records) >= self.batch_size
        self._wake.set()
        if full:
            self._hurry.set()
        return submitted.written

    def _waiting(self) -> int:
        """Error spans in the queue (a submission holds many)."""
        items, spans = self._items_in - self._items_out, self._spans_in - self._spans_out
        return len(self._queue) - items + spans

    def _enqueue(self, item: ReadableSpan) -> bool:
        if not self._accepting:
            return False
        if len(self._queue) >= self.queue_size:
            with self._drop_lock:
                self._dropped += 1
            return False
        self._queue.append(item)
        if not self._wake.is_set():
            self._wake.set()
        if len(self._queue) >= self.batch_size and not self._hurry.is_set():
            self._hurry.set()
        return True

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until everything queued before this call is classified and written."""
        if not self._worker.is_alive():
            return not self._queue
        marker = _FlushMarker()
        self._queue.append(marker)
        self._hurry.set()
        self._wake.set()
        return marker.wait(timeout_millis / 1000)

    def shutdown(self) -> None:
        """Stop accepting spans, drain the queue, stop the worker. Safe to call twice."""
        if not self._accepting:
            return
        self._accepting = False
        self.force_flush()
        self._exit = True
        self._hurry.set()
        self._wake.set()
        self._worker.join(timeout=5)

    # -- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._wake.clear()
            if not queue:
                if self._exit:
                    self._give_up_held()
                    return
                if self._held and time.monotonic() >= self._retry_at:
                    self._write([])
                self._wake.wait(self._idle_wait_s)
                continue
            if self._linger_s > 0 and self._waiting() < self.batch_size:
                self._hurry.wait(self._linger_s)
            self._hurry.clear()
            batch: list[ReadableSpan | SpanRecord] = []
            submitted: list[_Submitted] = []
            marker = None
            while queue and len(batch) < self.batch_size:
                item = queue.popleft()
                if isinstance(item, _FlushMarker):
                    marker = item
                    break
                if isinstance(item, _Submitted):
                    self._items_out += 1
                    self._spans_out += len(item.records)
                    if item.written.set_running_or_notify_cancel():  # False: its sender left
                        batch.extend(item.records)
                        submitted.append(item)
                else:
                    batch.append(item)
            written = False
            if batch:
                try:
                    written = self._process(batch, submitted)
                except Exception:  # the worker must outlive any one batch
                    self._failed += len(batch)
                    log.exception("could not process %d error spans", len(batch))
            for item in submitted:
                item.written.set_result(written)
            if marker is not None:
                marker.set()

    def _process(self, batch: list[ReadableSpan | SpanRecord], submitted: list[_Submitted]) -> bool:
        """Classify and write ``batch``'s own spans and ``submitted``'s records in one
        transaction; False when the store failed."""
        own = self._classify(item for item in batch if not isinstance(item, SpanRecord))
        records = [record for item in submitted for record in item.records]
        # Other services' spans: a failure reported around itself counts once.
        counted = self._enclosing.counted(records) if records else []
        kept = {id(record) for record in counted} if len(counted) < len(records) else None
        sent = [
            (
                sent_key(item.records),
                self._classify(
                    item.records if kept is None else [r for r in item.records if id(r) in kept]
                ),
            )
            for item in submitted
        ]
        if not self._write(own, sent):
            return False
        self._enclosing.remember(counted)
        self._joined += len(records) - len(counted)
        return True

    def _classify(
        self, items: Iterable[ReadableSpan | SpanRecord]
    ) -> list[tuple[SpanRecord, Classification]]:
        classify, classified = self.classifier.classify, []
        for item in items:
            try:
                record = (
                    item if isinstance(item, SpanRecord) else SpanRecord.from_readable_span(item)
                )
                classified.append((record, classify(record)))
            except Exception:
                self._failed += 1
                log.exception("could not classify an error span; it is skipped")
        self._classified += len(classified)
        return classified

    def _write(self, own: list[tuple[SpanRecord, Classification]], sent: Sent = ()) -> bool:
        """Write the held spans, ``own`` (this process's: held through an outage) and
        ``sent`` in one transaction, and publish the outcomes."""
        held = list(self._held)
        if held:
            now_ns = time.time_ns()
            for record, _ in held:
                record.attributes["ers.held_s"] = round((now_ns - record.end_ns) / 1e9, 1)
        others = sum(len(items) for _, items in sent)
        try:
            outcomes = self.store.record_errors(held + own if held else own, sent)
        except Exception as exc:
            self._retry_at = time.monotonic() + self._retry_s
            if isinstance(exc, self._outages):
                self._hold(own)
                self._failed += others
                log.error("could not write %d error spans: %s", len(held) + len(own) + others, exc)
            else:  # not the store being away: writing the same again would fail the same
                self._failed += len(held) + len(own) + others
                self._held.clear()
                log.exception(
                    "could not write %d error spans to the incident store", len(own) + others
                )
            return False
        if held:
            self._held.clear()
            log.warning("wrote %d error spans held through the incident store's outage", len(held))
        self._publish(outcomes)
        return True

    def _hold(self, items: list[tuple[SpanRecord, Classification]]) -> None:
        room = self._hold_max - len(self._held)
        self._held.extend(items[:room])
        if len(items) > room:
            self._failed += len(items) - room  # the oldest are kept: they began the outage

    def _give_up_held(self) -> None:
        if self._held:
            self._failed += len(self._held)
            log.error(
                "%d error spans held through the incident store's outage were not written: "
                "it was still unavailable when the service stopped",
                len(self._held),
            )
            self._held.clear()

    def _publish(self, outcomes: Sequence[Any]) -> None:
        subscribers = self._subscribers
        for outcome in outcomes:
            for subscriber in subscribers:
                try:
                    subscriber(outcome)
                except Exception:
                    self._subscriber_errors += 1
                    # The first failure, then one in a thousand: a broken subscriber in a storm
                    # must not flood the log.
                    if self._subscriber_errors % 1000 == 1:
                        log.exception(
                            "an incident subscriber failed (%d so far)", self._subscriber_errors
                        )
