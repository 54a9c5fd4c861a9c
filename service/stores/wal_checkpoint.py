"""WAL checkpoints off the event loop.

With SQLite's default, the connection whose commit takes the write-ahead log past 1000 pages
copies the log into the database file and syncs both, inside that commit. The stores commit
from the event loop, so every few hundred chats one of them stalled the loop for the length
of an fsync (about 4 ms here), and every request queued behind it: that was a large part of
/chat's p99. The stores turn automatic checkpoints off, and this thread checkpoints each open
store every ``interval_s`` on a connection of its own. A PASSIVE checkpoint never waits for
the store's writer, and the sqlite3 module releases the GIL while it runs.

The log is then at most ``interval_s`` of writes long; the first commit after a complete
checkpoint starts it over, and ``journal_size_limit`` gives the space back.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Protocol

log = logging.getLogger("ers.stores")

CHECKPOINT_INTERVAL_S = 0.5


class Checkpointable(Protocol):
    component: str

    def checkpoint(self) -> tuple[int, int, int] | None: ...


class WalCheckpointer:
    """One daemon thread for every open store of the process; started by the first store."""

    def __init__(self, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._stores: weakref.WeakSet[Checkpointable] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def add(self, store: Checkpointable) -> None:
        with self._lock:
            self._stores.add(store)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="sqlite-wal-checkpoint", daemon=True
                )
                self._thread.start()

    def discard(self, store: Checkpointable) -> None:
        with self._lock:
            self._stores.discard(store)

    def run_once(self) -> None:
        with self._lock:
            stores = list(self._stores)
        for store in stores:
            try:
                store.checkpoint()
            except Exception as exc:  # a failed checkpoint is retried next interval
                self.failures += 1
                log.warning("WAL checkpoint of the %s store failed: %s", store.component, exc)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            self.run_once()


CHECKPOINTER = WalCheckpointer()
