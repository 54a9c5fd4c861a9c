"""One unit of writes: a chat turn with the writes its agents asked for, or a profile update,
and the idempotency record of the request when it carried a key. Committed whole or not at
all; the engines (``uow_sqlite``, ``uow_postgres``) say how.

The statements are written once, with ``?`` marks and the component schemas named
``ers_<component>``: PostgreSQL has those schemas, and SQLite attaches each component's file
under that name (or, for a unit that touches one file, runs on that file as ``main``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.errors import UserInputError
from service.stores.base import ChatTurn, Profile, profile_from_row
from service.stores.sql import Dialect
from service.stores.writes import AddExpense, SetBudgetLimit, UpdateProfile, Write, current_month


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """How long and how many idempotency keys are remembered."""

    ttl_s: float = 86_400.0
    max_keys: int = 100_000


@dataclass(frozen=True, slots=True)
class RememberedReply:
    """The reply a request with an idempotency key was answered with."""

    scope: str
    key: str
    fingerprint: str
    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Applied:
    turn_id: int | None = None
    # The profile of ``Unit.read_profile`` after the unit's writes.
    profile: Profile | None = None


@dataclass(frozen=True, slots=True)
class KeyToRemember:
    scope: str
    key: str
    fingerprint: str
    status: int
    # The reply body, from what the unit applied (a profile update replies with the profile).
    body: Callable[[Applied], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Unit:
    writes: Sequence[Write] = ()
    turn: ChatTurn | None = None
    # Marks this unit's expense rows, so applying the unit again adds none twice.
    turn_key: str | None = None
    # The turn key its expense had before turn keys named the request (the key alone).
    turn_key_before: str | None = None
    key: KeyToRemember | None = None
    read_profile: str | None = None
    now: float = field(default_factory=time.time)

    def components(self) -> list[str]:
        """The stores the unit writes, in commit order: the conversations store, which holds
        the turn and the idempotency record, last."""
        touched = {write.component for write in self.writes}
        if self.read_profile is not None:
            touched.add("profiles")
        if self.turn is not None or self.key is not None:
            touched.add("conversations")
        return [c for c in ("budgets", "profiles", "conversations") if c in touched]


class ExpenseRecordedBefore(UserInputError):
    """A keyed request's expense is stored already, by an earlier send whose reply (and key)
    is no longer remembered: nothing is recorded again, and the reply must not say it is."""

    status = 409

    def __init__(self, key: str) -> None:
        super().__init__(
            f"the expense of this request was recorded by an earlier send with the "
            f"Idempotency-Key '{key}', whose reply is no longer remembered (older than "
            "idempotency_key_ttl_s, pushed out by idempotency_keys_max newer keys, "
            "rolled back or forgotten at a rollback of a store, or never stored: the disk "
            "filled as it was committed); nothing was recorded again. A new expense needs a new key"
        )


class KeyTaken(Exception):
    """Another request with the same idempotency key committed first; or (``ours``) this
    one did, and its commit lost its answer: its reply is the one remembered, not a replay."""

    def __init__(self, scope: str, key: str, *, ours: bool = False) -> None:
        super().__init__(f"idempotency key already used in {scope}")
        self.scope = scope
        self.key = key
        self.ours = ours


class Transaction(Protocol):
    """Statements inside one open transaction of an engine."""

    async def rows(self, component: str, sql: str, params: Sequence[Any]) -> list[Any]: ...

    async def insert(self, component: str, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT into a table whose key is ``id``; returns the new row's id."""
        ...


class UnitOfWork(Protocol):
    async def commit(self, unit: Unit) -> Applied: ...
    async def remembered(self, scope: str, key: str) -> RememberedReply | None: ...


class Reader(Protocol):
    """A component's store as the unit of work reads it, on either engine."""

    schema: str

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Any | None: ...


Names = Mapping[str, str]


DEFAULT_POLICY = KeyPolicy()


def statement_count(unit: Unit) -> int:
    """How many statements ``apply`` runs for the unit (one needs no explicit transaction)."""
    keyed = 3 if unit.key is not None else 0
    read = 1 if unit.read_profile is not None else 0
    return len(unit.writes) + (unit.turn is not None) + keyed + read


async def apply(
    tx: Transaction,
    names: Names,
    unit: Unit,
    *,
    dialect: Dialect,
    policy: KeyPolicy = DEFAULT_POLICY,
) -> Applied:
    """Run the unit's statements in ``tx``; raises KeyTaken when the key is already used."""
    for write in unit.writes:
        await _write(tx, names, write, unit, dialect, policy)
    profile: Profile | None = None
    if unit.read_profile is not None:
        rows = await tx.rows(
            "profiles",
            f"SELECT * FROM {names['profiles']}.profiles WHERE user_id = ?",
            (unit.read_profile,),
        )
        if rows:
            profile = profile_from_row(rows[0], dialect.decode_list(rows[0]["equipment"]))
    turn_id = await _record_turn(tx, names, unit.turn) if unit.turn is not None else None
    applied = Applied(turn_id=turn_id, profile=profile)
    if unit.key is not None:
        wrote = ",".join(["", *sorted({write.component for write in unit.writes}), ""])
        await _remember(tx, names["conversations"], unit.key, applied, wrote, unit.now, policy)
    return applied


async def _write(
    tx: Transaction,
    names: Names,
    write: Write,
    unit: Unit,
    dialect: Dialect,
    policy: KeyPolicy,
) -> None:
    if isinstance(write, AddExpense):
        # The expense keeps its turn's key for good: a send of the same key, even once its
        # reply is forgotten (its time is up, or it was pushed out of the newest), finds the
        # expense recorded and adds none (ExpenseRecordedBefore, a 409).
        added = await tx.rows(
            "budgets",
            f"INSERT INTO {names['budgets']}.expenses (user_id, category, amount_cents, note,"
            " month, spent_at, turn_key) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (turn_key) DO NOTHING RETURNING id",
            (
                write.user_id,
                write.category,
                write.amount_cents,
                write.note,
                current_month(unit.now),
                unit.now,
                unit.turn_key,
            ),
        )
        if not added and unit.key is not None:
            if await _key_remembered(tx, names["conversations"], unit.key, unit.now, policy):
                # The same request, sent again while this one ran, committed first: answer
                # with its reply, not as if the expense were a forgotten send's.
                raise KeyTaken(unit.key.scope, unit.key.key)
            raise ExpenseRecordedBefore(unit.key.key)
        if added and unit.key is not None and unit.turn_key_before is not None:
            before = await tx.rows(
                "budgets",
                f"SELECT user_id, category, amount_cents, note FROM {names['budgets']}.expenses"
                " WHERE turn_key = ?",
                (unit.turn_key_before,),
            )
            expense = (write.user_id, write.category, write.amount_cents, write.note)
            found = [(r["user_id"], r["category"], r["amount_cents"], r["note"]) for r in before]
            if expense in found:  # this request, sent before
                raise ExpenseRecordedBefore(unit.key.key)
    elif isinstance(write, SetBudgetLimit):
        await tx.rows(
            "budgets",
            f"INSERT INTO {names['budgets']}.budgets (user_id, category, limit_cents,"
            " updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (user_id, category) DO UPDATE"
            " SET limit_cents = excluded.limit_cents, updated_at = excluded.updated_at",
            (write.user_id, write.category, write.limit_cents, unit.now),
        )
    elif isinstance(write, UpdateProfile):
        given = dict(write.fields)
        if "equipment" in given:
            given["equipment"] = dialect.encode_list(
                tuple(str(item) for item in given["equipment"])
            )
        # Column names are profile fields only (checked by UpdateProfile.of), never a
        # caller's text.
        columns = ["user_id", *given, "updated_at"]
        updates = ", ".join(f"{name} = excluded.{name}" for name in [*given, "updated_at"])
        await tx.rows(
            "profiles",
            f"INSERT INTO {names['profiles']}.profiles ({', '.join(columns)})"
            f" VALUES ({', '.join('?' for _ in columns)})"
            f" ON CONFLICT (user_id) DO UPDATE SET {updates}",
            (write.user_id, *given.values(), unit.now),
        )


TURN_COLUMNS = (
    "user_id",
    "message",
    "response",
    "agent",
    "success",
    "degraded",
    "trace_id",
    "created_at",
)


def turn_values(turn: ChatTurn) -> tuple[Any, ...]:
    """The row of ``turn`` in ``TURN_COLUMNS`` order, as every engine stores it."""
    return (
        turn.user_id,
        turn.message,
        turn.response,
        turn.agent,
        turn.success,
        turn.degraded,
        turn.trace_id,
        turn.created_at or time.time(),
    )


def only_a_turn(unit: Unit) -> bool:
    """The unit stores a chat turn and nothing else: no agent writes, no idempotency key."""
    return unit.turn is not None and statement_count(unit) == 1


async def _record_turn(tx: Transaction, names: Names, turn: ChatTurn) -> int:
    return await tx.insert(
        "conversations",
        f"INSERT INTO {names['conversations']}.turns ({', '.join(TURN_COLUMNS)})"
        f" VALUES ({', '.join('?' for _ in TURN_COLUMNS)})",
        turn_values(turn),
    )


async def _key_remembered(
    tx: Transaction, schema: str, key: KeyToRemember, now: float, policy: KeyPolicy
) -> bool:
    rows = await tx.rows(
        "conversations",
        f"SELECT 1 AS taken FROM {schema}.idempotency_keys"
        " WHERE scope = ? AND key = ? AND created_at >= ?",
        (key.scope, key.key, now - policy.ttl_s),
    )
    return bool(rows)


async def _remember(
    tx: Transaction,
    schema: str,
    key: KeyToRemember,
    applied: Applied,
    wrote: str,
    now: float,
    policy: KeyPolicy,
) -> None:
    table = f"{schema}.idempotency_keys"
    await tx.rows(
        "conversations", f"DELETE FROM {table} WHERE created_at < ?", (now - policy.ttl_s,)
    )
    rows = await tx.rows(
        "conversations",
        f"INSERT INTO {table} (scope, key, fingerprint, status, body, created_at, wrote)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, key) DO NOTHING RETURNING id",
        (
            key.scope,
            key.key,
            key.fingerprint,
            key.status,
            json.dumps(key.body(applied)),
            now,
            wrote,
        ),
    )
    if not rows:
        raise KeyTaken(key.scope, key.key)
    # The newest max_keys keys stay; ids only grow.
    await tx.rows(
        "conversations",
        f"DELETE FROM {table} WHERE id <= ?",
        (int(rows[0]["id"]) - policy.max_keys,),
    )


async def remembered(
    conversations: Reader, scope: str, key: str, policy: KeyPolicy
) -> RememberedReply | None:
    """The reply remembered for ``key`` in ``scope`` while the policy keeps it."""
    row = await conversations.fetch_one(
        f"SELECT scope, key, fingerprint, status, body FROM {conversations.schema}"
        ".idempotency_keys WHERE scope = ? AND key = ? AND created_at >= ?",
        (scope, key, time.time() - policy.ttl_s),
    )
    if row is None:
        return None
    return RememberedReply(
        scope=row["scope"],
        key=row["key"],
        fingerprint=row["fingerprint"],
        status=int(row["status"]),
        body=json.loads(row["body"]),
    )
