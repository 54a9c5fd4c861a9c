"""An OpenAI-compatible completion read the way providers answer: an answer, or the failure
kind of a completion that holds none (the shapes of the OpenAI API reference's chat
completion object, and of vLLM, Ollama and LiteLLM)."""

from __future__ import annotations

from typing import Any

import pytest

from service.agents.failure_kinds import BadResponse, FailureKind
from service.agents.openai_reply import completion_text


def completion(*choices: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "m", "choices": list(choices)}


def choice(
    content: str | list[Any] | None, finish_reason: str | None = "stop", **message: Any
) -> dict[str, Any]:
    return {
        "index": 0,
        "message": {"role": "assistant", "content": content, **message},
        "finish_reason": finish_reason,
    }


def failure_of(document: Any) -> FailureKind:
    with pytest.raises(FailureKind) as raised:
        completion_text("helper", 200, document)
    return raised.value


@pytest.mark.parametrize("finish_reason", ["stop", None, "eos"])
def test_an_answer_is_its_content(finish_reason: str | None) -> None:
    document = completion(choice("Three sets of squats.", finish_reason, refusal=None))
    assert completion_text("helper", 200, document) == "Three sets of squats."


@pytest.mark.parametrize(
    "document",
    [
        completion(choice(None, refusal="I'm sorry, I can't help with that.")),
        # A refusal beside text: still the model declining, not an answer.
        completion(choice("I'm sorry", refusal="I can't help with that.")),
        # As a content part (it was a bad_response: "none of type text"), alone or with text.
        completion(choice([{"type": "refusal", "refusal": "I'm sorry, I can't help with that."}])),
        completion(
            choice([{"type": "text", "text": "I'm sorry"}, {"type": "refusal", "refusal": "no"}])
        ),
    ],
)
def test_a_models_refusal_is_a_refusal_of_the_request_not_a_broken_reply(
    document: dict[str, Any],
) -> None:
    """It was a bad_response: a breaker failure of an agent that was only asked something its
    model declines, counted to isolate it."""
    failure = failure_of(document)
    assert failure.kind == "refusal"
    assert not failure.retryable and not failure.counts_against_breaker
    assert getattr(failure, "call_outcome", None) == "refused"
    assert failure.status == 200
    assert "sorry" not in str(failure) and "help with" not in str(failure)  # its free text


@pytest.mark.parametrize("content", [None, "Here is how to"])
def test_a_content_filter_finish_is_a_content_filter_refusal_whole_or_partial(
    content: str | None,
) -> None:
    """Filtered with null content it was a bad_response counted against the breaker; filtered
    part-way it was passed to the user as a whole answer."""
    failure = failure_of(completion(choice(content, "content_filter")))
    assert failure.kind == "content_filter"
    assert not failure.retryable and not failure.counts_against_breaker
    assert str(failure) == (
        "agent 'helper' answered finish_reason content_filter: its provider's content filter "
        "withheld the answer"
    )


@pytest.mark.parametrize("content", ["A full plan: squats, push-", "", None])
def test_an_answer_cut_off_at_the_token_limit_is_no_answer(content: str | None) -> None:
    """It went to the user as a whole answer ("emergency": false); a reasoning model that
    spent its tokens thinking answers it with content empty or null."""
    failure = failure_of(completion(choice(content, "length")))
    assert failure.kind == "truncated"
    assert not failure.retryable and not failure.counts_against_breaker
    assert getattr(failure, "call_outcome", None) == "refused"
    assert "output token limit" in str(failure) and "squats" not in str(failure)


def test_an_answer_cut_off_at_the_models_context_window_is_no_answer() -> None:
    """Mistral's model_length (its context window reached): it went to the user as a whole
    answer, ending mid-word."""
    failure = failure_of(completion(choice("A full plan: squats, push-", "model_length")))
    assert failure.kind == "truncated"
    assert not failure.retryable and not failure.counts_against_breaker
    assert getattr(failure, "call_outcome", None) == "refused"
    assert "context window" in str(failure) and "squats" not in str(failure)


@pytest.mark.parametrize("reason", ["error", "abort", "insufficient_system_resource"])
def test_an_answer_its_server_cut_off_on_a_failure_is_a_server_error(reason: str) -> None:
    """Mistral's error, vLLM's abort, DeepSeek's insufficient_system_resource: the server
    stopped the generation on a failure of its own (vLLM answers its own error with a 500).
    The part written before went to the user as a whole answer."""
    failure = failure_of(completion(choice("A full plan: squats, push-", reason)))
    assert failure.kind == "server_error"
    assert failure.retryable and failure.counts_against_breaker
    assert getattr(failure, "call_outcome", "failure") == "failure"
    assert failure.status == 200
    assert str(failure) == (
        f"agent 'helper' answered finish_reason {reason}: its server stopped the answer on a "
        "failure of its own, so the answer is cut off"
    )


TOOL_CALL = [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
]


@pytest.mark.parametrize(
    "document",
    [
        completion(choice(None, "tool_calls", tool_calls=TOOL_CALL)),
        # Ollama: empty content, and the tool calls beside finish_reason stop.
        completion(choice("", "stop", tool_calls=TOOL_CALL)),
        completion(choice(None, "function_call", function_call={"name": "f", "arguments": "{}"})),
    ],
)
def test_a_tool_call_is_the_agents_setup_not_a_broken_reply(document: dict[str, Any]) -> None:
    """It was a bad_response saying the content is not a string (or an empty reply), which
    named no cause: ERS sends no tools, so the agent's server adds them."""
    failure = failure_of(document)
    assert failure.kind == "tool_calls"
    assert not failure.retryable and failure.counts_against_breaker
    assert "ERS sends no tools" in str(failure) and "get_weather" not in str(failure)


@pytest.mark.parametrize(
    "content",
    [
        "<think>Squats or lunges? Squats.</think>\n\nThree sets of squats.",
        "\n<think>\nline one\n\nline two\n</think>Three sets of squats.",
        [{"type": "text", "text": "<think>hmm</think>\n"}, {"type": "text", "text": "Three "}]
        + [{"type": "text", "text": "sets of squats."}],
    ],
)
def test_reasoning_written_before_the_answer_is_left_out(content: str | list[Any]) -> None:
    """DeepSeek-R1 and Qwen models served without a reasoning parser write their reasoning
    into the content, in a <think> block: the user got the model's notes before the answer."""
    assert completion_text("helper", 200, completion(choice(content))) == "Three sets of squats."


@pytest.mark.parametrize(
    "content",
    [
        "Write <think>...</think> tags around notes.",  # not before the answer: part of it
        "<think>cut off before its end, so no answer can be told apart",
    ],
)
def test_text_that_holds_no_reasoning_block_before_the_answer_is_kept(content: str) -> None:
    assert completion_text("helper", 200, completion(choice(content))) == content


def test_a_completion_of_reasoning_alone_is_said_to_hold_no_answer() -> None:
    """Before: it came out as the same "empty reply" as a model that said nothing."""
    failure = failure_of(completion(choice("<think>Squats or lunges? Hmm.</think>\n")))
    assert failure.kind == "bad_response"
    assert "a <think> block and no answer after it" in str(failure)
    assert "Squats" not in str(failure)
    cut = failure_of(completion(choice("<think>Squats or lunges?</think>", "length")))
    assert cut.kind == "truncated"  # the token limit, not the model's choice


def test_of_several_choices_the_first_is_the_answer() -> None:
    second = {**choice("Second."), "index": 1}
    assert completion_text("helper", 200, completion(choice("First."), second)) == "First."


# Mistral's reasoning models answer content as a list of chunks: the thinking (which holds
# text chunks of its own) before the answer's text.
THINKING = {"type": "thinking", "thinking": [{"type": "text", "text": "Squats or lunges?"}]}


@pytest.mark.parametrize(
    "parts",
    [
        [
            THINKING,
            {"type": "text", "text": "Three sets of squats, "},
            {"type": "text", "text": "then a run."},
        ],
        [
            {"type": "text", "text": "Three sets of squats, "},
            {"type": "reference", "reference_ids": [1]},
            {"type": "text", "text": "then a run."},
        ],
        [
            {"type": "image_url", "image_url": "x"},
            "stray",
            {"type": "text", "text": "Three sets of squats, then a run."},
        ],
    ],
)
def test_content_as_a_list_of_parts_answers_with_its_text_parts_in_order(
    parts: list[Any],
) -> None:
    """It was a bad_response ("content is not a string") and a breaker failure, for every
    answer of a reasoning model that sends its thinking beside the answer."""
    document = completion(choice(parts))
    assert completion_text("helper", 200, document) == "Three sets of squats, then a run."


@pytest.mark.parametrize(
    "parts",
    [[THINKING], [], [{"type": "text"}, {"type": "text", "text": None}], [{"text": "untyped"}]],
)
def test_content_parts_with_no_text_part_break_the_contract_saying_so(parts: list[Any]) -> None:
    failure = failure_of(completion(choice(parts)))
    assert failure.kind == "bad_response" and failure.counts_against_breaker
    assert str(failure) == (
        "agent 'helper' broke the openai contract: choices[0].message.content is a list of "
        "content parts, none of type text: no answer, only reasoning or parts that are not text"
    )
    assert "Squats" not in str(failure) and "untyped" not in str(failure)  # the model's words


@pytest.mark.parametrize(
    ("document", "why"),
    [
        ({"answer": "x"}, "the reply has no choices[0].message.content"),
        ([1, 2], "the reply has no choices[0].message.content"),
        (completion({"index": 0}), "the reply has no choices[0].message.content"),
        (completion({"message": {"role": "assistant"}}), "has no choices[0].message.content"),
        (completion(choice(None)), "choices[0].message.content is not a string"),
    ],
)
def test_a_completion_without_text_breaks_the_contract(document: Any, why: str) -> None:
    failure = failure_of(document)
    assert isinstance(failure, BadResponse) and failure.kind == "bad_response"
    assert failure.counts_against_breaker
    assert str(failure).startswith("agent 'helper' broke the openai contract: ")
    assert why in str(failure)


@pytest.mark.parametrize(
    ("error", "kind", "said"),
    [
        # LiteLLM's proxy answered an unknown model so (BerriAI/litellm#27030).
        (
            {"message": "No models available", "type": "invalid_request_error"},
            "bad_response",
            "agent 'helper' answered HTTP 200 with an error object (invalid_request_error) "
            "instead of a completion: its server, or a proxy in front of it, failed the request",
        ),
        ("upstream failed", "bad_response", "answered HTTP 200 with an error object instead"),
        (
            {"message": "filtered", "code": "content_filter"},
            "content_filter",
            "agent 'helper' answered HTTP 200 with an error object (content_filter): its "
            "provider's content filter refused the message",
        ),
        ({"code": "context_length_exceeded"}, "context_length", "context window"),
        ({"code": "insufficient_quota"}, "quota", "quota or billing limit"),
    ],
)
def test_an_error_object_in_a_200_is_read_by_its_code(error: Any, kind: str, said: str) -> None:
    """It read as a broken contract, "the reply has no choices[0].message.content", which hid
    the error the proxy reported."""
    failure = failure_of({"error": error})
    assert failure.kind == kind
    assert failure.status == 200
    assert said in str(failure)
    assert "No models" not in str(failure)  # the error's free text


@pytest.mark.parametrize(
    ("error", "kind", "said"),
    [
        # LiteLLM's proxy writes the status as the code, OpenRouter as a number.
        ({"message": "slow down", "type": "throttling_error", "code": "429"}, "rate_limit", "429"),
        ({"message": "Provider returned error", "code": 429}, "rate_limit", "429"),
        ({"type": "requests", "code": "rate_limit_exceeded"}, "rate_limit", "rate_limit_exceeded"),
        ({"type": "rate_limit_error", "message": "slow down"}, "rate_limit", "rate_limit_error"),
        ({"message": "upstream failed", "code": "500"}, "server_error", "500"),
        ({"message": "Provider returned error", "code": 502}, "server_error", "502"),
        ({"type": "server_error", "code": None}, "server_error", "server_error"),
        ({"type": "overloaded_error", "message": "Overloaded"}, "server_error", "overloaded_error"),
        ({"code": "service_unavailable"}, "server_error", "service_unavailable"),
    ],
)
def test_an_error_object_whose_code_says_rate_limit_or_server_error_is_that_kind(
    error: dict[str, Any], kind: str, said: str
) -> None:
    """A proxy answering its upstream's 429 or 5xx with a 200 and an error object: it was a
    bad_response, not retried and a breaker failure, where the status would have been
    retried (and a rate limit no breaker failure)."""
    failure = failure_of({"error": error})
    assert failure.kind == kind
    assert failure.status == 200
    assert failure.retryable
    assert failure.counts_against_breaker is (kind == "server_error")
    assert failure.retry_after_s is None  # a 200 says no wait
    assert f"HTTP 200 with an error object ({said})" in str(failure)
    assert "slow down" not in str(failure) and "Provider" not in str(failure)


@pytest.mark.parametrize(
    ("error", "said"),
    [
        ({"code": "404"}, "(404)"),
        ({"code": 1113, "type": "invalid_request_error"}, "(invalid_request_error)"),
        ({"code": True}, "error object instead"),
        ({"code": "timeout"}, "(timeout)"),
    ],
)
def test_an_error_object_with_another_code_stays_a_bad_response_naming_it(
    error: dict[str, Any], said: str
) -> None:
    failure = failure_of({"error": error})
    assert failure.kind == "bad_response" and not failure.retryable
    assert said in str(failure)


def test_an_error_code_echoing_a_credential_is_redacted() -> None:
    with pytest.raises(BadResponse) as raised:
        completion_text("helper", 200, {"error": {"code": "bad_key_sk-s3cret"}}, ["sk-s3cret"])
    assert "s3cret" not in str(raised.value)
    assert "(bad_key_REDACTED)" in str(raised.value)


@pytest.mark.parametrize("document", [completion(), {**completion(), "error": None}])
def test_an_empty_list_of_choices_says_so(document: dict[str, Any]) -> None:
    failure = failure_of(document)
    assert failure.kind == "bad_response"
    assert str(failure) == (
        "agent 'helper' broke the openai contract: its choices are an empty list, with no answer"
    )
