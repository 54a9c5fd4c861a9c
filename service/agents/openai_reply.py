"""The answer in an OpenAI-compatible chat completion, read the way providers really reply.

A 200 is not always an answer (the OpenAI API reference's ``choices[].finish_reason`` and
``message.refusal``; vLLM, Ollama and LiteLLM answer the same shapes):

- ``message.refusal`` set, or a content part of type ``refusal`` (as the OpenAI API
  reference's assistant content parts have it): the model declined the request
  (``refusal``);
- ``finish_reason: content_filter``: the provider's filter withheld the answer, whole or in
  part (``content_filter``);
- ``finish_reason: tool_calls`` (or ``function_call``, or ``message.tool_calls`` with any
  reason, as Ollama answers): the model asks ERS to run a tool, and ERS sends none
  (``tool_calls``);
- ``finish_reason: length`` (or Mistral's ``model_length``): the answer stopped at the
  model's output token limit (or its context window), cut off (``truncated``);
- ``finish_reason: error`` (Mistral), ``abort`` (vLLM) or ``insufficient_system_resource``
  (DeepSeek): the server stopped the answer on a failure of its own, cut off, as a 5xx
  (``server_error``; vLLM itself answers its own ``error`` with a 500);
- an ``{"error": ...}`` object instead of ``choices``, as some proxies answer a failed request
  with a 200: by its error code, as for an error status (``failure_from_error_object``).

Any other ``finish_reason`` (``stop``, null, a server's own such as ``eos``) passes the
content on. Of several choices (ERS asks for one) the first is the answer.

``message.content`` is a string, or a list of content parts, as Mistral answers with a
reasoning model (``{"type": "text", "text": ...}`` beside ``{"type": "thinking", ...}``):
the answer is its text parts, in order; reasoning and anything else that is not text is
left out (a thinking part holds text parts of its own, which are not the answer). Reasoning
written into the content itself, a ``<think>...</think>`` block before the answer (DeepSeek-R1
and Qwen models served without a reasoning parser, Groq's raw reasoning format), is left out
too: the user gets the answer, not the model's notes on the way to it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from service.agents.failure_kinds import (
    BadResponse,
    ContentFiltered,
    ModelRefused,
    ServerError,
    ToolCallRequested,
    Truncated,
    failure_from_error_object,
)

TOOL_CALL_REASONS = ("tool_calls", "function_call")
# Cut off by a failure of the server's own, which another attempt may not meet.
GENERATION_FAILED_REASONS = ("error", "abort", "insufficient_system_resource")
# A reasoning model's notes, written before its answer in the content.
LEADING_REASONING = re.compile(r"\s*<think>.*?</think>\s*", re.DOTALL)


def completion_text(agent: str, status: int, document: Any, secrets: Sequence[str] = ()) -> str:
    """The answer's text, or the failure kind of a completion that holds none; ``secrets``
    (what the request carried of a credential) are in no message."""
    choices = document.get("choices") if isinstance(document, dict) else None
    if not choices:
        error = document.get("error") if isinstance(document, dict) else None
        if error:
            raise failure_from_error_object(agent, status, error, secrets)
        if isinstance(choices, list):
            raise _broke(agent, status, "its choices are an empty list, with no answer")
        raise _broke(agent, status, "the reply has no choices[0].message.content")
    first = choices[0] if isinstance(choices, list) else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        raise _broke(agent, status, "the reply has no choices[0].message.content")
    reason = first.get("finish_reason")
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip():
        raise _refused(agent, status, "message.refusal")
    if reason == "content_filter":
        raise ContentFiltered(
            f"agent '{agent}' answered finish_reason content_filter: its provider's content "
            "filter withheld the answer",
            status=status,
        )
    if reason in TOOL_CALL_REASONS or message.get("tool_calls") or message.get("function_call"):
        said = f"finish_reason {reason}" if reason in TOOL_CALL_REASONS else "message.tool_calls"
        raise ToolCallRequested(
            f"agent '{agent}' asked for a tool call ({said}), but ERS sends no tools and runs "
            "none: turn off the tools its server, or a proxy in front of it, adds to requests",
            status=status,
        )
    if reason == "length":
        raise Truncated(
            f"agent '{agent}' answered finish_reason length: its model stopped at its output "
            "token limit, so the answer is cut off; raise that limit on the model's server "
            "(ERS sends no max_tokens)",
            status=status,
        )
    if reason == "model_length":
        raise Truncated(
            f"agent '{agent}' answered finish_reason model_length: its model reached the end "
            "of its context window, so the answer is cut off; give the agent a model with a "
            "longer one",
            status=status,
        )
    if reason in GENERATION_FAILED_REASONS:
        raise ServerError(
            f"agent '{agent}' answered finish_reason {reason}: its server stopped the answer "
            "on a failure of its own, so the answer is cut off",
            status=status,
        )
    if "content" not in message:
        raise _broke(agent, status, "the reply has no choices[0].message.content")
    content = message["content"]
    if isinstance(content, list):
        if any(isinstance(part, dict) and part.get("type") == "refusal" for part in content):
            raise _refused(agent, status, "a content part of type refusal")
        return _without_reasoning(agent, status, _text_of_parts(agent, status, content))
    if not isinstance(content, str):
        raise _broke(agent, status, "choices[0].message.content is not a string")
    return _without_reasoning(agent, status, content)


def _without_reasoning(agent: str, status: int, text: str) -> str:
    # Only a block that is closed: a lone <think> leaves no way to tell where an answer is.
    reasoning = LEADING_REASONING.match(text)
    if reasoning is None:
        return text
    if reasoning.end() == len(text):  # the model stopped after thinking, or was cut there
        raise _broke(agent, status, "the completion holds a <think> block and no answer after it")
    return text[reasoning.end() :]


def _text_of_parts(agent: str, status: int, parts: list[Any]) -> str:
    texts = [
        part["text"]
        for part in parts
        if isinstance(part, dict)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
    ]
    if not texts:
        raise _broke(
            agent,
            status,
            "choices[0].message.content is a list of content parts, none of type text: no "
            "answer, only reasoning or parts that are not text",
        )
    return "".join(texts)


def _refused(agent: str, status: int, where: str) -> ModelRefused:
    # The refusal's words are the model's free text: not in the message (nor incidents).
    return ModelRefused(
        f"agent '{agent}' declined the request: its model answered with a refusal ({where}) "
        "instead of content",
        status=status,
    )


def _broke(agent: str, status: int, why: str) -> BadResponse:
    return BadResponse(f"agent '{agent}' broke the openai contract: {why}", status=status)
