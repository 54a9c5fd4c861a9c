"""Units of work over the SQLite files.

A unit that touches one file (a chat turn with no other writes, the hot path) runs on that
store's own connection in one transaction. A unit that touches several files runs on a
connection of its own that attaches them, conversations last, in one transaction, while it
holds each store's lock (so a rollback cannot swap a file under it). That connection is
kept between units, and any store's close (a rollback's pause included) closes it first, so
it never holds a file that is being swapped.

What this guarantees (stated in the README): an error while the statements run (a full disk
at page allocation, a paused store, a constraint) rolls every file back. In WAL mode SQLite
commits attached files one after another and atomically per file only, so a failure in the
commit itself (the disk fills as the conversations file's log is written, or the process
dies) can leave the earlier files committed: then the unit's expense is deleted again at
once (by its turn key), and a retry with the same Idempotency-Key re-applies the unit
without adding that expense twice. When even that delete fails (the disk that failed the
commit refuses it too), the expense is stored for good, and the turn is answered as
committed (a 503 would ask for a retry that records it again, without a key twice): only
its line in the conversation history is missing, as the error log says. Budget limits and
profile fields are set to a value, so applying them again changes nothing.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from service.errors import StoreUnavailable
from service.stores.sql import SQLITE
from service.stores.sqlite import (
    FileBusy,
    SqliteStore,
    SqliteTransaction,
    is_busy,
    outwaiting_writers,
    store_failure,
)
from service.stores.unit_of_work import (
    Applied,
    KeyPolicy,
    RememberedReply,
    Unit,
    apply,
    remembered,
)
from service.stores.writes import AddExpense

log = logging.getLogger("ers.stores")


class SqliteUnitOfWork:
    def __init__(
        self,
        conversations: SqliteStore,
        budgets: SqliteStore,
        profiles: SqliteStore,
        policy: KeyPolicy,
    ) -> None:
        self._stores: dict[str, SqliteStore] = {
            "budgets": budgets,
            "profiles": profiles,
            "conversations": conversations,
        }
        self._conversations = conversations
        self.policy = policy
        self._attach_lock = threading.Lock()
        self._shared: sqlite3.Connection | None = None
        for store in self._stores.values():
            store.on_close(self._drop_shared)

    async def remembered(self, scope: str, key: str) -> RememberedReply | None:
        return await remembered(self._conversations, scope, key, self.policy)

    async def commit(self, unit: Unit) -> Applied:
        if not unit.writes and unit.key is None and unit.read_profile is None:
            # The hot path: a turn that writes nothing else.
            return await self._conversations.commit_unit(unit)
        components = unit.components()
        if not components:
            return Applied()
        if len(components) == 1:
            return await self._stores[components[0]].commit_unit(unit, self.policy)
        return await outwaiting_writers(
            " and ".join(components), lambda: self._commit_attached(components, unit)
        )

    async def _commit_attached(self, components: list[str], unit: Unit) -> Applied:
        """One try; another connection's write lock on a file raises its sqlite3 error, after
        the rollback and with every lock let go, for ``outwaiting_writers`` to try again."""
        with ExitStack() as held:
            for name in components:
                held.enter_context(self._stores[name].exclusive())
            held.enter_context(self._attach_lock)
            conn = self._shared_connection()
            if conn is None:  # a store not in this unit is paused: attach only this unit's
                conn = held.enter_context(self._attached(components))
            try:
                return await self._run(conn, components, unit)
            except StoreUnavailable:
                if conn is self._shared:  # start afresh after a failure
                    self._shared = None
                    conn.close()
                raise

    async def _run(self, conn: sqlite3.Connection, components: list[str], unit: Unit) -> Applied:
        names = {name: f"ers_{name}" for name in components}
        tx = SqliteTransaction(conn)
        try:
            conn.execute("BEGIN")
            applied = await apply(tx, names, unit, dialect=SQLITE, policy=self.policy)
        except sqlite3.Error as exc:
            conn.rollback()
            if is_busy(exc):  # waited out by ``outwaiting_writers``, which names the file
                raise FileBusy(tx.component or components[-1], exc) from exc
            if (store := self._stores.get(tx.component)) is not None:
                store.note_damage(exc)
            raise store_failure(tx.component, exc) from exc
        except BaseException:
            conn.rollback()
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._expense_stands(conn, unit, exc):
                # Stored, and not to be taken back: the reply that reports it is the truth
                # (a 503 would ask for a retry that records it again).
                return Applied(turn_id=None, profile=applied.profile)
            raise store_failure(" and ".join(components), exc) from exc
        return applied

    def _shared_connection(self) -> sqlite3.Connection | None:
        """The connection with every file attached, kept between units (attaching and
        reading three schemas per unit cost about 150 us); None while a store is closed.
        Any store's close drops it first (``on_close``), so it never outlives a swap."""
        if self._shared is None and all(store.is_open for store in self._stores.values()):
            self._shared = self._connect(list(self._stores))
        return self._shared

    def _drop_shared(self) -> None:
        with self._attach_lock:
            if self._shared is not None:
                self._shared.close()
                self._shared = None

    @contextmanager
    def _attached(self, components: list[str]) -> Iterator[sqlite3.Connection]:
        conn = self._connect(components)
        try:
            yield conn
        finally:
            conn.close()

    def _connect(self, components: list[str]) -> sqlite3.Connection:
        """A connection with the components' files attached as ``ers_<name>``, in commit
        order (SQLite commits attached files in the order they were attached)."""
        conn = sqlite3.connect(
            ":memory:",
            timeout=0,  # a busy file is waited out on the loop: ``outwaiting_writers``
            isolation_level=None,
            check_same_thread=False,
        )
        conn.row_factory = sqlite3.Row
        for name in components:
            try:
                path = str(self._stores[name].path)
                conn.execute(f"ATTACH DATABASE ? AS ers_{name}", (path,))
                conn.execute(f"PRAGMA ers_{name}.synchronous=NORMAL")
            except sqlite3.Error as exc:
                conn.close()
                raise store_failure(name, exc) from exc
        return conn

    def _expense_stands(self, conn: sqlite3.Connection, unit: Unit, cause: Exception) -> bool:
        """After a commit that failed part way: the conversations file (last) holds neither
        turn nor key, so delete the expense an earlier file may have committed. True when it
        is stored and could not be deleted (the disk that failed the commit refuses the
        delete too)."""
        if conn.in_transaction:
            conn.rollback()
        if unit.turn_key is None or not any(isinstance(w, AddExpense) for w in unit.writes):
            return False
        try:
            conn.execute("DELETE FROM ers_budgets.expenses WHERE turn_key = ?", (unit.turn_key,))
            return False
        except sqlite3.Error as exc:
            undo = exc
        try:
            stored = conn.execute(
                "SELECT 1 FROM ers_budgets.expenses WHERE turn_key = ?", (unit.turn_key,)
            ).fetchone()
        except sqlite3.Error:
            stored = None  # not known: answered as not stored, and logged
        if stored is not None:
            log.error(
                "a chat turn's commit failed part way (%s) after its expense (turn key %s) was"
                " stored, and the expense could not be taken back (%s): the reply reports it"
                " as recorded; the turn is missing from the conversation history",
                cause,
                unit.turn_key,
                undo,
            )
            return True
        log.error(
            "a chat turn's commit failed part way (%s) and whether its expense (turn key %s)"
            " is stored cannot be read: the reply is a 503; if it is in budgets.expenses"
            " by that turn_key, %s",
            cause,
            unit.turn_key,
            "a retry with the same Idempotency-Key does not add it again"
            if unit.key is not None
            else "the request carried no Idempotency-Key",
        )
        return False
