"""A read of the archive that its caller waits for only briefly, because it has an answer of
its own: the trace keeper answers a trace it holds in memory, and reads the archive only for
the spans kept elsewhere (before a restart, or by another replica).

A database server that hangs without closing its connections (stopped, not shut down) never
answers a statement: the read goes on alone on a daemon thread, and the caller answers
without it after ``wait_s``. At most ``readers`` reads run at once, so frozen reads never
pile up; one that finds them all taken waits for a free one within the same ``wait_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# How long a caller that can answer without the archive waits for it.
WAIT_S = 1.0
# Reads running at once at most: as many as the PostgreSQL pool's connections.
READERS = 4


class PromptRead(Generic[T]):
    def __init__(
        self, read: Callable[[str], T], *, wait_s: float = WAIT_S, readers: int = READERS
    ) -> None:
        self._read = read
        self.wait_s = wait_s
        self._readers = threading.BoundedSemaphore(readers)

    def __call__(self, key: str) -> tuple[T | None, str]:
        """What ``read(key)`` returned and "", or None and why it was not read: it raised,
        or did not answer within ``wait_s``."""
        deadline = time.monotonic() + self.wait_s
        if not self._readers.acquire(timeout=self.wait_s):
            return None, f"earlier reads of the archive have not answered for {self.wait_s:g} s"
        answer: list[T] = []
        failure: list[BaseException] = []
        done = threading.Event()

        def read() -> None:
            try:
                answer.append(self._read(key))
            except Exception as exc:  # told to the caller, if it still waits
                failure.append(exc)
            finally:
                self._readers.release()
                done.set()

        threading.Thread(target=read, name="archive-read", daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            return None, f"the archive did not answer within {self.wait_s:g} s"
        if failure:
            return None, f"the archive could not be read: {one_line(str(failure[0]))}"
        return answer[0], ""


def one_line(text: str) -> str:
    """``text`` on one line of ASCII, as a header value may carry it."""
    return " ".join(text.encode("ascii", "replace").decode().split())[:300]
