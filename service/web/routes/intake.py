"""POST /v1/traces: OTLP/HTTP intake (protobuf or JSON) for spans other services send,
usually through an OpenTelemetry Collector that forwards only error spans."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request, Response, status

from service.web.auth import IntakeAuth
from service.web.deps import Incidents, Traces
from service.web.openapi import errors
from telemetry.otlp_intake import (
    MalformedOtlp,
    UnsupportedContentType,
    decode_traces,
    encode_response,
)

router = APIRouter(tags=["otlp intake"])


@router.post(
    "/v1/traces",
    response_class=Response,
    responses={
        200: {"content": {"application/x-protobuf": {}, "application/json": {}}},
        **errors(400, 415),
    },
)
async def receive_traces(
    request: Request, who: IntakeAuth, incidents: Incidents, traces: Traces
) -> Response:
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    try:
        records = decode_traces(body, content_type, request.headers.get("content-encoding"))
    except UnsupportedContentType as exc:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, str(exc)) from None
    except MalformedOtlp as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    errors = [record for record in records if record.is_error]
    if errors:
        # Kept (and on disk) before the incident exists, so its trace link answers at once.
        await asyncio.to_thread(traces.keeper.keep_records, records)
    processor = incidents.processor
    accepted = sum(processor.submit_record(record) for record in errors)
    if accepted < len(errors):
        # The queue is full; the collector retries on 503 with backoff.
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the incident queue is full; {len(errors) - accepted} error spans not taken",
            headers={"Retry-After": "2"},
        )
    payload, media = encode_response(content_type)
    return Response(payload, media_type=media)
