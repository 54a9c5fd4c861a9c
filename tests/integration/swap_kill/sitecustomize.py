"""Loaded by Python at start-up only in processes a test starts with this folder on
PYTHONPATH: with ERS_TEST_KILL_AFTER_RENAMES=<n>, the process SIGKILLs itself in the middle
of a rollback's swap, once <n> files were renamed in (with <n> at least the number of files,
after the last rename, before the swap is committed). Nothing in the product reads it."""

import os
import signal

_after = os.environ.get("ERS_TEST_KILL_AFTER_RENAMES")
if _after is not None:
    from backup import swap

    _limit = int(_after)
    _rename_in = swap._rename_in
    _renamed = 0

    def _rename_then_maybe_die(entry: object) -> None:
        global _renamed
        if _renamed == _limit:
            os.kill(os.getpid(), signal.SIGKILL)
        _rename_in(entry)  # type: ignore[arg-type]
        _renamed += 1

    def _commit_or_die(done: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)  # every file renamed in, not yet committed

    swap._rename_in = _rename_then_maybe_die  # type: ignore[assignment]
    swap.commit_soon = _commit_or_die  # type: ignore[assignment]
