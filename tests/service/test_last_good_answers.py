"""The cache of last good answers is bounded in characters as well as in entries: a remote
agent may answer with up to a MiB, and 10,000 such answers would have been 10 GB."""

from __future__ import annotations

from service.agents.base import AgentReply, AgentRequest
from service.resilience.fallback import AnswersRolledBack, LastGoodAnswers


def remember(cache: LastGoodAnswers, user: str, content: str) -> None:
    cache.remember(AgentRequest("m", user), AgentReply(content, "helper"))


def recall(cache: LastGoodAnswers, user: str) -> str | None:
    return cache.recall(AgentRequest("m", user), "helper")


def test_the_oldest_answers_go_once_the_characters_run_over() -> None:
    cache = LastGoodAnswers(capacity=100, max_chars=1000)
    for user in ("a", "b", "c"):
        remember(cache, user, user * 400)
    assert recall(cache, "a") is None  # 1200 characters: the oldest went
    assert recall(cache, "b") == "b" * 400 and recall(cache, "c") == "c" * 400

    remember(cache, "b", "short")  # a new answer replaces the user's old one in the count
    remember(cache, "d", "d" * 590)
    assert [recall(cache, u) for u in "bcd"] == ["short", "c" * 400, "d" * 590]


def test_an_answer_larger_than_the_bound_is_not_kept_and_pushes_nothing_out() -> None:
    cache = LastGoodAnswers(capacity=100, max_chars=1000)
    remember(cache, "a", "small")
    remember(cache, "b", "x" * 1001)
    assert recall(cache, "b") is None and recall(cache, "a") == "small"
    remember(cache, "a", "y" * 1001)  # and the user's earlier answer is not kept in its place
    assert recall(cache, "a") is None and len(cache) == 0


def test_trim_keeps_the_count_of_characters() -> None:
    cache = LastGoodAnswers(capacity=100, max_chars=1000)
    for user in "abcd":
        remember(cache, user, user * 200)
    assert cache.trim(keep=1) == 3
    remember(cache, "e", "e" * 800)  # 200 + 800: fits only if the trim gave back the rest
    assert recall(cache, "d") == "d" * 200 and recall(cache, "e") == "e" * 800


async def test_a_rollback_mark_drops_the_answers_once_on_each_replica() -> None:
    """The replica that ran a rollback drops its answers and marks it with a new token;
    another drops its own when it sees the token change, and neither drops again for a
    token already seen (its own, or one a poll reads again)."""
    here, there = LastGoodAnswers(), LastGoodAnswers()
    ran, follows = AnswersRolledBack(here), AnswersRolledBack(there)
    marked: list[dict[str, object] | None] = []
    ran.subscribe(lambda: marked.append(ran.record()))
    follows.resume({"token": "kept-at-its-start"})
    remember(here, "a", "before")
    remember(there, "a", "before")

    assert await ran.dropped() == ["cached answers given before the rollback dropped: 1"]
    (record,) = marked
    assert record is not None and record != {"token": "kept-at-its-start"} and len(here) == 0
    assert ran.follow(record, settle_s=4) is None  # its own mark, stored

    assert follows.follow({"token": "kept-at-its-start"}, settle_s=4) is None
    assert len(there) == 1
    assert follows.follow(record, settle_s=4) == (
        "cached answers given before a rollback there dropped: 1"
    )
    remember(there, "a", "after")
    assert follows.follow(record, settle_s=4) is None and recall(there, "a") == "after"
    assert follows.follow(None, settle_s=4) is None  # a store rolled back to before any mark

    remember(here, "b", "x")  # a second rollback there: a token of its own
    assert await ran.dropped() and ran.record() not in (None, record)
