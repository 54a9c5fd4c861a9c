"""Decoding OTLP/HTTP trace export bodies (protobuf or JSON) into span records.

OTLP/JSON differs from protobuf's own JSON mapping in one way that matters here: trace and
span ids are hex strings, not base64; they are converted before ``json_format`` parses the
body. Unknown fields are ignored, as the OTLP specification asks of receivers.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor, FileDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from telemetry.json_keys import RepeatedKey, TooLongNumber, loads_once_each
from telemetry.redaction import redact_attributes, redacted_text
from telemetry.span_record import SpanRecord, otlp_attributes

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# A decompressed body larger than this is refused: a small gzip body can expand enormously.
# Eight times the default body limit; the collector's batches stay under that limit unpacked.
MAX_DECODED_BYTES = 8 * 1024 * 1024
# protobuf's json_format refuses messages nested deeper than this (an attribute's kvlist
# inside a kvlist ...), with a ParseError.
MAX_JSON_MESSAGE_DEPTH = 100
ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


class MalformedOtlp(ValueError):
    """The body is not a valid OTLP trace export request; the message says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsupportedContentType(MalformedOtlp):
    """Neither protobuf nor JSON, or encoded other than by gzip or deflate (answer 415)."""


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def decode_traces(
    body: bytes, content_type: str, content_encoding: str | None = None
) -> tuple[list[SpanRecord], list[str]]:
    """Every span of the request as a record (errors and not), and why each span with
    invalid ids was left out (the request is then partly accepted, as OTLP's partial
    success has it). Raises ``MalformedOtlp``, also when no span of the request is valid."""
    request = decode_request(decompress(body, content_encoding), content_type)
    records: list[SpanRecord] = []
    refused: list[str] = []
    for resource_spans in request.resource_spans:
        resource = otlp_attributes(resource_spans.resource.attributes)
        redact_attributes(resource)  # once for all its spans
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if reason := _invalid_ids(span):
                    refused.append(reason)
                else:
                    records.append(SpanRecord.from_otlp(span, resource))
    if refused and not records:
        raise MalformedOtlp(_first_of(refused))
    return records, refused


def _first_of(reasons: list[str]) -> str:
    """Why spans were refused, in one line: the first reason, and how many more there are."""
    more = f" (and {len(reasons) - 1} more spans like it)" if len(reasons) > 1 else ""
    return reasons[0] + more


def _invalid_ids(span: Any) -> str | None:
    """Why the span's ids are invalid, naming it as a kept span is named (its secrets
    redacted: the reason goes into the reply, and from there into the sender's log)."""
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        return (
            f"span {redacted_text(span.name[:256])!r} has a trace id of {len(span.trace_id)} "
            f"bytes and a span id of {len(span.span_id)} bytes; OTLP wants 16 and 8"
        )
    if not any(span.trace_id) or not any(span.span_id):
        return (
            f"span {redacted_text(span.name[:256])!r} has an all-zero trace or span id, "
            "which OTLP calls invalid"
        )
    return None


def decompress(body: bytes, content_encoding: str | None) -> bytes:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedContentType(
            f"content encoding {encoding!r} is not supported; use gzip, deflate or none"
        )
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    parts: list[bytes] = []
    size = 0
    while True:  # a gzip body may be several members, read one after the other
        try:
            decoder = zlib.decompressobj(wbits=wbits)
            part = decoder.decompress(body, MAX_DECODED_BYTES + 1 - size)
        except zlib.error as exc:
            raise MalformedOtlp(f"the body is not valid {encoding}: {exc}") from exc
        parts.append(part)
        size += len(part)
        if size > MAX_DECODED_BYTES:
            raise MalformedOtlp(f"the body expands past {MAX_DECODED_BYTES} bytes")
        if not decoder.eof:
            raise MalformedOtlp(f"the {encoding} body is truncated")
        body = decoder.unused_data
        if not body:
            return b"".join(parts)
        if encoding != "gzip":
            raise MalformedOtlp(f"{len(body)} bytes follow the end of the deflate stream")


def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    kind = media_type(content_type)
    request = ExportTraceServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            try:
                return _with_utf8_repaired(body)
            except DecodeError:
                raise MalformedOtlp(
                    f"the protobuf body does not decode ({exc}): it is not an OTLP trace "
                    "export request, or it was cut short"
                ) from exc
        return request
    if kind == JSON:
        try:
            document = loads_once_each(body)
        except RepeatedKey as exc:
            raise MalformedOtlp(f"the JSON body is ambiguous: {exc}") from None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise MalformedOtlp(f"the JSON body does not parse: {exc}") from exc
        except TooLongNumber:
            raise MalformedOtlp(
                f"the JSON body holds a number of more than {TooLongNumber.digits} digits; "
                "OTLP's are 64 bits at most"
            ) from None
        if not isinstance(document, dict):
            raise MalformedOtlp("the JSON body must be an object with resourceSpans")
        try:
            converted = _hex_ids_to_base64(document)
        except RecursionError:  # json.loads takes deeper nesting than Python's recursion
            raise MalformedOtlp(
                "the JSON body nests deeper than an OTLP trace request can (protobuf reads "
                f"messages {MAX_JSON_MESSAGE_DEPTH} deep at most)"
            ) from None
        try:
            json_format.ParseDict(converted, request, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise MalformedOtlp(f"the JSON body is not an OTLP trace request: {exc}") from exc
        return request
    raise UnsupportedContentType(
        f"content type {kind or 'none'!r} is not supported; send {PROTOBUF} or {JSON}"
    )


class _LenientRequest:
    """The OTLP request with its string fields read as bytes, so that a string cut inside a
    character decodes. The collector's truncate_all and Substring (contrib 0.114) cut by
    byte; a strict decoder refused the whole batch for such a cut, and the exporter drops a
    refused batch (400 is not retried), with every error span in it."""

    def __init__(self) -> None:
        pool = descriptor_pool.DescriptorPool()
        self.strings: set[str] = set()  # full names of the fields OTLP declares as strings
        for file in _with_dependencies(ExportTraceServiceRequest.DESCRIPTOR.file):
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            self._strings_as_bytes(proto.package, proto.message_type)
            pool.Add(proto)
        name = ExportTraceServiceRequest.DESCRIPTOR.full_name
        self.message_class = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    def _strings_as_bytes(self, scope: str, messages: Any) -> None:
        for message in messages:
            full_name = f"{scope}.{message.name}"
            for field in message.field:
                if field.type == FieldDescriptor.TYPE_STRING:
                    field.type = FieldDescriptor.TYPE_BYTES
                    self.strings.add(f"{full_name}.{field.name}")
            self._strings_as_bytes(full_name, message.nested_type)

    def repair(self, message: Message) -> None:
        """Every string field of ``message``, deep, made valid UTF-8 (U+FFFD for what is not)."""
        for field, value in message.ListFields():
            if field.full_name in self.strings:
                if field.is_repeated:
                    value[:] = [item.decode(errors="replace").encode() for item in value]
                else:
                    setattr(message, field.name, value.decode(errors="replace").encode())
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value if field.is_repeated else [value]:
                    self.repair(item)


def _with_dependencies(file: FileDescriptor) -> list[FileDescriptor]:
    """``file`` after the files it imports, each once: the order a pool takes them in."""
    ordered: list[FileDescriptor] = []
    for dependency in file.dependencies:
        ordered += [f for f in _with_dependencies(dependency) if f not in ordered]
    return ordered + [file]


_LENIENT: _LenientRequest | None = None


def _with_utf8_repaired(body: bytes) -> ExportTraceServiceRequest:
    """The request, its strings made valid UTF-8 first; raises DecodeError when the body is
    not one even so."""
    global _LENIENT
    if _LENIENT is None:
        _LENIENT = _LenientRequest()
    lenient = _LENIENT.message_class.FromString(body)
    _LENIENT.repair(lenient)
    return ExportTraceServiceRequest.FromString(lenient.SerializeToString())


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON ids are hex; protobuf's JSON mapping of bytes is base64."""
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {}
    for key, value in node.items():
        if key in ID_FIELDS and isinstance(value, str):
            try:
                value = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError as exc:
                raise MalformedOtlp(f"{key} {value!r} is not hexadecimal") from exc
        else:
            value = _hex_ids_to_base64(value)
        converted[key] = value
    return converted


def encode_response(content_type: str, rejected: list[str] | None = None) -> tuple[bytes, str]:
    """The success reply in the request's encoding: an ExportTraceServiceResponse, empty
    unless spans were ``rejected``: then its partial_success counts them and says why (the
    first reason), and the sender drops them rather than sending them again."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = len(rejected)
        response.partial_success.error_message = (
            f"{_first_of(rejected)}; the other spans were taken"
        )
    if media_type(content_type) == JSON:
        return json.dumps(json_format.MessageToDict(response)).encode(), JSON
    return response.SerializeToString(), PROTOBUF


# The gRPC code an HTTP error stands for, in the Status an OTLP/HTTP error reply carries.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 3, 415: 3, 422: 3, 429: 8, 500: 13, 503: 14}


def encode_error(status: int, message: str) -> bytes:
    """An error reply to a protobuf request, as OTLP/HTTP has it: a ``google.rpc.Status``
    whose message says what went wrong (a collector's exporter writes it to its log)."""
    return Status(code=_GRPC_CODES.get(status, 2), message=message).SerializeToString()


__all__ = [
    "JSON",
    "PROTOBUF",
    "MalformedOtlp",
    "UnsupportedContentType",
    "decode_request",
    "decode_traces",
    "decompress",
    "encode_error",
    "encode_response",
]
