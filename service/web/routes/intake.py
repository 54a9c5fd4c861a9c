"""POST /v1/traces: OTLP/HTTP intake (protobuf or JSON) for spans other services send,
usually through an OpenTelemetry Collector that forwards only error spans.

A 200 means the request's error spans are in the incident store: the reply waits for the
incident pipeline to write them. A 503 means none of them was recorded (a full queue, a
store that failed, a pipeline too far behind to take them in ``TAKE_WAIT_S``, a stop), and
the sender retries; only a write that outlasts ``WRITE_WAIT_S`` once under way may still
land after its 503, and its retry is then not counted again (the store keeps the request's
key with what it wrote).
"""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, HTTPException, Request, Response, status
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ErsError
from service.web.auth import IntakeAuth
from service.web.deps import Incidents, Traces
from service.web.json_route import JsonRoute
from service.web.openapi import errors
from telemetry.exception_events import record_failure
from telemetry.incident_processor import IncidentProcessor, SubmissionRefused
from telemetry.otlp_intake import (
    PROTOBUF,
    MalformedOtlp,
    UnsupportedContentType,
    decode_traces,
    encode_error,
    encode_response,
)
from telemetry.span_record import SpanRecord

router = APIRouter(route_class=JsonRoute, tags=["otlp intake"])
# Spans the pipeline has not taken after this are withdrawn and answered 503.
TAKE_WAIT_S = 10.0
# A write under way is waited for (the store waits up to 5 s for a lock) this long more.
# Both waits end within the 30 s after which the collector's exporter (its default timeout)
# and the fleet's balancer (proxy_read_timeout) give up and resend: an answer later than
# that reaches no one (the resend is not counted again: the store keeps the spans' ids).
WRITE_WAIT_S = 15.0


@router.post(
    "/v1/traces",
    response_class=Response,
    responses={
        200: {"content": {"application/x-protobuf": {}, "application/json": {}}},
        **errors(400, 415, 503),
    },
)
async def receive_traces(
    request: Request, who: IntakeAuth, incidents: Incidents, traces: Traces
) -> Response:
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    encoding = request.headers.get("content-encoding")
    try:
        # Off the event loop: a body may expand to MAX_DECODED_BYTES of spans. Spans with
        # invalid ids are left out (rejected): a partial success.
        records, rejected = await asyncio.to_thread(decode_traces, body, content_type, encoding)
    except UnsupportedContentType as exc:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, str(exc)) from None
    except MalformedOtlp as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    if records:
        # Kept here before the incident exists, so its trace link answers at once on this
        # replica (the archive has it within a second: a kill -9 sooner loses it); spans
        # without an error join a trace kept already, or are dropped.
        await asyncio.to_thread(traces.keeper.keep_records, records)
    errors = [record for record in records if record.is_error]
    if errors:
        await _written(incidents.processor, errors)
    if rejected:
        incidents.spans_rejected.add(len(rejected))
    payload, media = encode_response(content_type, rejected)
    return Response(payload, media_type=media)


async def _written(processor: IncidentProcessor, errors: list[SpanRecord]) -> None:
    """Return once ``errors`` are in the incident store; raise a 503 (the sender retries)
    when they were not taken or not written."""
    try:
        written = processor.submit_records(errors)
    except SubmissionRefused as exc:
        raise _unavailable(f"{exc}; none of the {len(errors)} error spans was taken") from None
    # Shielded: a wait that runs out withdraws the spans only if the worker has not taken
    # them; a write under way is waited for, so its 503 does not precede a late write.
    landed = asyncio.wrap_future(written)
    try:
        async with asyncio.timeout(TAKE_WAIT_S):
            ok = await asyncio.shield(landed)
    except TimeoutError:
        if written.cancel():
            raise _unavailable(
                f"the incident pipeline did not take the {len(errors)} error spans within "
                f"{TAKE_WAIT_S:g} s (it is behind); none of them was recorded"
            ) from None
        try:
            async with asyncio.timeout(WRITE_WAIT_S):
                ok = await asyncio.shield(landed)
        except TimeoutError:
            raise _unavailable(
                f"the {len(errors)} error spans were still being written after "
                f"{TAKE_WAIT_S + WRITE_WAIT_S:g} s; they may yet be, and a retry is then not "
                "counted again"
            ) from None
    except asyncio.CancelledError:
        written.cancel()  # the request is gone: spans not taken yet are not written
        raise
    if not ok:
        raise _unavailable(
            f"the incident store could not write the {len(errors)} error spans (the service "
            "log says why); none of them was recorded"
        )


class IntakeRefused(ErsError):
    """Error spans another service sent were not recorded (answered 503)."""


def _unavailable(detail: str) -> HTTPException:
    """The 503 the sender retries on; its span says why, so the incident it makes does."""
    span = trace.get_current_span()
    span.set_attribute("ers.component", "intake")
    record_failure(span, IntakeRefused(detail))
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, f"{detail}; send them again", {"Retry-After": "2"}
    )


class ProtobufErrors:
    """An error reply to a protobuf OTLP request is a protobuf ``google.rpc.Status`` with the
    reply's ``detail`` as its message, as OTLP/HTTP requires: a collector's exporter reads
    it into its log, and could make nothing of the JSON the other routes answer. Every error
    of the route: the token's 401, the size limit's 413, a 503."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/traces" or not _protobuf(scope):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def send_status(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
            elif start is None or message["type"] != "http.response.body":
                await send(message)
            else:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = encode_error(start["status"], _detail(b"".join(chunks)))
                headers = [
                    (name, value)
                    for name, value in start.get("headers", ())
                    if name not in (b"content-type", b"content-length")
                ]
                headers += [
                    (b"content-type", PROTOBUF.encode()),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_status)


def _protobuf(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return value.split(b";")[0].strip().lower() == PROTOBUF.encode()
    return False


def _detail(body: bytes) -> str:
    """The ``detail`` of a JSON error reply (what to do), else the body as text."""
    text = body.decode(errors="replace")
    try:
        document = json.loads(body)
    except ValueError:
        return text
    return str(document.get("detail", text)) if isinstance(document, dict) else text
