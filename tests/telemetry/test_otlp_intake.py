from __future__ import annotations

import gzip
import json
import zlib

import pytest
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ProtoResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from telemetry.otlp_intake import (
    MalformedOtlp,
    UnsupportedContentType,
    decode_traces,
    encode_response,
)
from telemetry.span_record import SpanRecord


def other_service_spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "orders"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("orders")
    with (
        tracer.start_as_current_span("GET /orders", attributes={"http.route": "/orders"}),
        tracer.start_as_current_span("db.query", attributes={"db.rows": 3}) as span,
    ):
        span.record_exception(ConnectionResetError("Connection reset by peer"))
        span.set_attribute("tags", ["a", "b"])
        span.set_status(Status(StatusCode.ERROR, "ConnectionResetError: reset"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def protobuf_body(spans: list[ReadableSpan] | None = None) -> bytes:
    return encode_spans(spans or other_service_spans()).SerializeToString()


def decoded(body: bytes, content_type: str, encoding: str | None = None) -> list[SpanRecord]:
    """The records of a request whose every span is valid."""
    records, rejected = decode_traces(body, content_type, encoding)
    assert rejected == []
    return records


def otlp_json_body(spans: list[ReadableSpan]) -> bytes:
    """OTLP/JSON as senders write it: camelCase, ids in hex."""
    document = json_format.MessageToDict(encode_spans(spans))
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = _base64_to_hex(span[key])
    return json.dumps(document).encode()


def _base64_to_hex(value: str) -> str:
    import base64

    return base64.b64decode(value).hex()


def test_protobuf_bodies_decode_into_records_matching_the_sdk_spans() -> None:
    spans = other_service_spans()
    records = decoded(encode_spans(spans).SerializeToString(), "application/x-protobuf")
    assert records == [SpanRecord.from_readable_span(span) for span in spans]
    child = next(r for r in records if r.name == "db.query")
    assert child.service_name == "orders"
    assert child.exception_type == "ConnectionResetError"
    assert child.exception_message == "Connection reset by peer"
    assert child.attributes == {"db.rows": 3, "tags": ["a", "b"]}
    assert child.parent_span_id == next(r.span_id for r in records if r.name == "GET /orders")


def test_json_bodies_with_hex_ids_decode_like_protobuf() -> None:
    spans = other_service_spans()
    from_json = decoded(otlp_json_body(spans), "application/json; charset=utf-8")
    from_protobuf = decoded(protobuf_body(spans), "application/x-protobuf")
    assert from_json == from_protobuf
    assert from_json[0].parent_span_id == from_json[1].span_id


def test_gzip_bodies_are_decoded() -> None:
    records = decoded(gzip.compress(protobuf_body()), "application/x-protobuf", "gzip")
    assert len(records) == 2


def test_every_member_of_a_gzip_body_is_decoded() -> None:
    first, second = protobuf_body(), protobuf_body()  # two requests' messages concatenated
    body = gzip.compress(first) + gzip.compress(second)  # are one message of both (protobuf)
    records = decoded(body, "application/x-protobuf", "gzip")
    assert len(records) == 4


def test_names_and_types_other_services_send_are_cut() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "s" * 300_000}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("n" * 300_000) as span:
        span.set_attribute("error.type", "T" * 300_000)
        span.set_status(Status(StatusCode.ERROR, "m"))
    provider.shutdown()
    (record,) = decoded(
        protobuf_body(list(exporter.get_finished_spans())), "application/x-protobuf"
    )
    assert (len(record.name), len(record.service_name), len(record.exception_type)) == (
        256,
        256,
        256,
    )


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "reason"),
    [
        (b"\xff\xff\xff", "application/x-protobuf", None, "the protobuf body does not decode"),
        (b"{not json", "application/json", None, "the JSON body does not parse"),
        (b"[1, 2]", "application/json", None, "must be an object"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
            "application/json",
            None,
            "traceId 'zz' is not hexadecimal",
        ),
        (b'{"resourceSpans": 5}', "application/json", None, "not an OTLP trace request"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "a", "name": "b"}]}]}]}',
            "application/json",
            None,
            'ambiguous: the key "name" is given more than once in one object',
        ),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": '
            b'[{"traceId": "abcd", "spanId": "01"}]}]}]}',
            "application/json",
            None,
            "OTLP wants 16 and 8",
        ),
        (b"plain", "application/x-protobuf", "gzip", "not valid gzip"),
        (gzip.compress(b"x" * 100)[:-8], "application/x-protobuf", "gzip", "truncated"),
        (gzip.compress(b"") + b"trailing", "application/x-protobuf", "gzip", "not valid gzip"),
        (zlib.compress(b"") + b"trailing", "application/x-protobuf", "deflate", "8 bytes follow"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "'
            + b"0" * 32
            + b'", "spanId": "0102030405060708"}]}]}]}',
            "application/json",
            None,
            "all-zero trace or span id",
        ),
        (b"", "application/x-protobuf", "br", "'br' is not supported; use gzip, deflate or"),
        (
            # Python's own ValueError, which left the intake as a 500.
            b'{"resourceSpans": [{"resource": {"attributes": [{"key": "n", "value": '
            b'{"intValue": ' + b"1" * 5000 + b"}}]}}]}",
            "application/json",
            None,
            "a number of more than 4300 digits",
        ),
    ],
)
def test_malformed_bodies_raise_with_a_reason(
    body: bytes, content_type: str, encoding: str | None, reason: str
) -> None:
    with pytest.raises(MalformedOtlp, match=reason):
        decode_traces(body, content_type, encoding)


def test_spans_with_invalid_ids_are_left_out_of_a_request_with_valid_ones() -> None:
    valid = f'{{"traceId": "{"01" * 16}", "spanId": "{"02" * 8}", "name": "kept"}}'
    short = '{"traceId": "abcd", "spanId": "01", "name": "short"}'
    body = f'{{"resourceSpans": [{{"scopeSpans": [{{"spans": [{short}, {valid}]}}]}}]}}'
    records, rejected = decode_traces(body.encode(), "application/json")
    assert [record.name for record in records] == ["kept"]
    assert len(rejected) == 1 and "span 'short' has a trace id of 2 bytes" in rejected[0]


def test_json_nested_deeper_than_python_recurses_is_malformed() -> None:
    """A kvlist 200 deep parses as JSON but took the id conversion past Python's recursion
    limit: a RecursionError, answered 500 (and an incident of ERS's own) instead of 400."""
    value = '{"kvlistValue": {"values": [{"key": "k", "value": ' * 200
    value += '{"stringValue": "leaf"}' + "}]}}" * 200
    span = (
        f'{{"traceId": "{"01" * 16}", "spanId": "{"02" * 8}", "name": "deep", '
        f'"status": {{"code": 2}}, "attributes": [{{"key": "deep", "value": {value}}}]}}'
    )
    body = f'{{"resourceSpans": [{{"scopeSpans": [{{"spans": [{span}]}}]}}]}}'
    with pytest.raises(MalformedOtlp, match="nests deeper than an OTLP trace request can"):
        decode_traces(body.encode(), "application/json")


def test_other_content_types_are_unsupported() -> None:
    with pytest.raises(UnsupportedContentType, match="'text/plain' is not supported"):
        decode_traces(b"", "text/plain")


def test_an_empty_request_has_no_spans() -> None:
    assert decoded(b"", "application/x-protobuf") == []
    assert decoded(b"{}", "application/json") == []


def test_responses_use_the_request_encoding() -> None:
    assert encode_response("application/json") == (b"{}", "application/json")
    assert encode_response("application/x-protobuf") == (b"", "application/x-protobuf")


def test_secrets_in_other_services_spans_are_redacted_as_they_arrive() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "payments"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    attributes = {
        "url.full": "https://bob:pw-1@api.example/v1/charge?api_key=sk-live-2&page=3",
        "http.request.header.authorization": ("Bearer sk-live-3",),
        "http.response.header.set-cookie": ("session=sk-live-4",),
        "db.statement": "SELECT 1",
    }
    with provider.get_tracer("t").start_as_current_span("POST", attributes=attributes) as span:
        span.record_exception(ConnectionError("no route to postgres://admin:sk-live-5@db/pay"))
        span.set_status(Status(StatusCode.ERROR, "postgres://admin:sk-live-6@db refused"))
    provider.shutdown()
    (record,) = decoded(
        protobuf_body(list(exporter.get_finished_spans())), "application/x-protobuf"
    )
    kept = json.dumps(record.to_dict())
    assert "sk-live" not in kept and "pw-1" not in kept
    assert record.attributes["url.full"] == (
        "https://REDACTED:REDACTED@api.example/v1/charge?api_key=REDACTED&page=REDACTED"
    )
    assert record.attributes["http.request.header.authorization"] == ["REDACTED"]
    assert record.attributes["db.statement"] == "SELECT 1"
    assert record.exception_message == "no route to postgres://REDACTED:REDACTED@db/pay"


def test_credentials_in_resource_array_and_map_attributes_are_redacted() -> None:
    """The URLs of a resource's attributes (a service's DSN, its command line) and of array
    and map values were kept verbatim: only a span's string attributes were redacted."""
    exporter = InMemorySpanExporter()
    resource = Resource.create(
        {
            "service.name": "payments",
            "db.url": "postgres://svc:sk-live-1@db/pay",
            "process.command_args": ["app", "--db=postgres://svc:sk-live-2@db/pay"],
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    attributes = {"peers": ["https://u:sk-live-3@a.example", "plain"], "ports": [1, 2]}
    with provider.get_tracer("t").start_as_current_span("work", attributes=attributes) as span:
        span.set_status(Status(StatusCode.ERROR, "RuntimeError: x"))
    provider.shutdown()
    request = encode_spans(list(exporter.get_finished_spans()))
    kvlist = request.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="cfg")
    kvlist.value.kvlist_value.values.add(key="dsn").value.string_value = "mysql://r:sk-live-4@m/db"
    (record,) = decoded(request.SerializeToString(), "application/x-protobuf")
    assert "sk-live" not in json.dumps(record.to_dict())
    assert record.resource["db.url"] == "postgres://REDACTED:REDACTED@db/pay"
    assert record.attributes["peers"] == ["https://REDACTED:REDACTED@a.example", "plain"]
    assert record.attributes["ports"] == [1, 2]
    assert record.attributes["cfg"] == {"dsn": "mysql://REDACTED:REDACTED@m/db"}


def test_a_map_of_headers_or_settings_keeps_no_credential() -> None:
    """A kvlist attribute holding headers or settings kept its Authorization and password:
    only captured-header attributes were judged by their name."""
    request = encode_spans(other_service_spans())
    span = request.resource_spans[0].scope_spans[0].spans[-1]
    headers = span.attributes.add(key="http.request.headers").value.kvlist_value.values
    headers.add(key="Authorization").value.string_value = "Basic dXNlcjpwYXNz"
    headers.add(key="Accept").value.string_value = "application/json"
    settings = span.attributes.add(key="db.settings").value.kvlist_value.values
    settings.add(key="password").value.string_value = "hunter2"
    records = decoded(request.SerializeToString(), "application/x-protobuf")
    assert "dXNlcjpwYXNz" not in json.dumps([record.to_dict() for record in records])
    assert "hunter2" not in json.dumps([record.to_dict() for record in records])
    record = records[-1]
    assert record.attributes["http.request.headers"] == {
        "Authorization": "REDACTED",
        "Accept": "application/json",
    }
    assert record.attributes["db.settings"] == {"password": "REDACTED"}


def test_the_credentials_of_a_url_in_a_spans_name_are_redacted() -> None:
    """A client span named by the URL it fetched kept its password, and an incident of a
    failure without words is named after its span: the password was in its message."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "payments"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    name = "GET https://bob:sk-live-1@api.example/v1/charge"
    with provider.get_tracer("t").start_as_current_span(name) as span:
        span.set_attribute("error.type", "500")
        span.set_status(Status(StatusCode.ERROR))
    provider.shutdown()
    (record,) = decoded(
        protobuf_body(list(exporter.get_finished_spans())), "application/x-protobuf"
    )
    assert record.name == "GET https://REDACTED:REDACTED@api.example/v1/charge"


def test_a_span_left_out_for_its_ids_is_named_without_its_secrets() -> None:
    """The reason a span was left out goes back in the reply (a 400, or a partial success),
    and the collector writes it to its log: named as a kept span would be, redacted."""
    name = "GET https://bob:sk-live-2@api.example/v1/charge?key=sk-q-3"
    span = {"traceId": "0" * 32, "spanId": "0102030405060708", "name": name}
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    with pytest.raises(MalformedOtlp) as refused:
        decode_traces(body, "application/json")
    valid = {"traceId": "ab" * 16, "spanId": "0102030405060708", "name": "ok"}
    both = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span, valid]}]}]}).encode()
    records, rejected = decode_traces(both, "application/json")  # a partial success
    assert len(records) == 1 and len(rejected) == 1
    for reason in (refused.value.reason, *rejected):
        assert "sk-live-2" not in reason and "sk-q-3" not in reason, reason
        assert "api.example/v1/charge?key=REDACTED" in reason


def test_strings_cut_inside_a_character_are_taken_with_a_replacement_character() -> None:
    """Wherever OTLP has a string: resource, scope, span and event attributes (keys, nested
    arrays and kvlists, the string_value of AnyValue's oneof), names, status, trace state."""
    nested = AnyValue(
        kvlist_value=KeyValueList(
            values=[KeyValue(key="inner-ZZZ", value=AnyValue(string_value="deep-ZZZ"))]
        )
    )
    values = ArrayValue(values=[AnyValue(string_value="item-ZZZ"), AnyValue(int_value=7)])
    span = Span(
        trace_id=b"\x01" * 16,
        span_id=b"\x02" * 8,
        name="checkout-ZZZ",
        trace_state="k=ZZZ",
        status=ProtoStatus(code=2, message="délai-ZZZ"),
        attributes=[
            KeyValue(key="key-ZZZ", value=AnyValue(string_value="value-ZZZ")),
            KeyValue(key="map", value=nested),
            KeyValue(key="list", value=AnyValue(array_value=values)),
            KeyValue(key="empty", value=AnyValue(string_value="")),
        ],
        events=[
            Span.Event(
                name="exception",
                attributes=[
                    KeyValue(key="exception.message", value=AnyValue(string_value="Ω-ZZZ"))
                ],
            )
        ],
    )
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=ProtoResource(
                    attributes=[
                        KeyValue(key="service.name", value=AnyValue(string_value="svc-ZZZ"))
                    ]
                ),
                scope_spans=[
                    ScopeSpans(scope=InstrumentationScope(name="scope-ZZZ"), spans=[span])
                ],
            )
        ]
    )
    # The first byte of "é" alone, then two letters: every length stays as it was.
    body = request.SerializeToString().replace(b"ZZZ", b"\xc3ZZ")
    with pytest.raises(DecodeError):
        ExportTraceServiceRequest.FromString(body)
    (record,) = decoded(body, "application/x-protobuf")
    cut = "\ufffdZZ"
    assert record.name == f"checkout-{cut}" and record.status_message == f"délai-{cut}"
    assert record.service_name == f"svc-{cut}"
    assert record.attributes[f"key-{cut}"] == f"value-{cut}"
    assert record.attributes["map"] == {f"inner-{cut}": f"deep-{cut}"}
    assert record.attributes["list"] == [f"item-{cut}", 7]
    assert record.attributes["empty"] == ""
    assert record.exception_message == f"Ω-{cut}"
