"""Killing a backup and a rollback at many moments never leaves a half-written database.

A child process runs a backup and then a rollback; the test kills its whole process group
(the child and its restic) with SIGKILL, either some time after a marker line or while the
child sleeps inside a named rollback step. Afterwards every live file must be wholly the old
or wholly the new state, `restic check` must pass once the wrapper has removed the dead
process's lock, and the next backup must succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backup import BackupConfig, BackupManager, RepositoryConfig
from tests.integration.conftest import rows, write_budgets, write_conversations

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROLLED_BACK = ("conversations", "budgets")

CHILD = textwrap.dedent(
    """
    import asyncio, contextlib, os, sys, time
    from pathlib import Path
    from backup import BackupConfig, BackupManager, RepositoryConfig
    from backup.events import RollbackStepStarted

    root, snapshot_id = Path(sys.argv[1]), sys.argv[2]
    pause_at = os.environ.get("CRASH_PAUSE_AT")

    def on_event(event):
        if isinstance(event, RollbackStepStarted):
            print("step", event.step, flush=True)
            if event.step == pause_at:
                time.sleep(60)  # the parent kills us here

    @contextlib.asynccontextmanager
    async def pause_writers():
        yield

    async def main():
        components = {p.stem: p for p in sorted((root / "data").glob("*.sqlite3"))}
        manager = await BackupManager.open(
            RepositoryConfig(str(root / "repo"), root / "restic-password",
                             cache_dir=root / "restic-cache"),
            BackupConfig(components, root / "work"),
        )
        manager.subscribe(on_event)
        print("backup", flush=True)
        await manager.create(None, "manual")
        print("rollback", flush=True)
        await manager.rollback(snapshot_id, COMPONENTS, "crash test", pause_writers, lambda: None)
        print("done", flush=True)

    asyncio.run(main())
    """
).replace("COMPONENTS", repr(list(ROLLED_BACK)))

# (line the child prints, seconds to wait after it, rollback step to sleep in, state expected:
# "old" = before the rollback, "new" = rolled back, None = either, file by file)
KILL_POINTS = [
    ("backup", 0.15, None, None),
    ("backup", 0.45, None, None),
    ("step restore", 0.25, None, "old"),
    ("step verify", 0.0, "verify", "old"),
    ("step swap", 0.0, "swap", "old"),
    ("step reopen", 0.0, "reopen", "new"),
]


def manager_config(root: Path) -> tuple[RepositoryConfig, BackupConfig]:
    components = {p.stem: p for p in sorted((root / "data").glob("*.sqlite3"))}
    repository = RepositoryConfig(
        str(root / "repo"), root / "restic-password", cache_dir=root / "restic-cache"
    )
    return repository, BackupConfig(components, root / "work")


@pytest.fixture(scope="module")
def crash_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict, dict]:
    """State A in snapshot S0, then the live files moved on to state B."""
    root = tmp_path_factory.mktemp("crash-template")
    (root / "data").mkdir()
    files = {name: root / "data" / f"{name}.sqlite3" for name in ROLLED_BACK}
    write_conversations(files["conversations"], 400)
    write_budgets(files["budgets"], {"food": 400.0, "gym": 60.0})

    async def first_snapshot() -> str:
        manager = await BackupManager.open(*manager_config(root), may_create=True)
        result = await manager.create(None, "manual")
        assert result.snapshot_id
        return result.snapshot_id

    snapshot_id = asyncio.run(first_snapshot())
    state_a = {name: rows(path, name) for name, path in files.items()}
    write_conversations(files["conversations"], 300, start=400)
    write_budgets(files["budgets"], {"food": 5.0, "rent": 900.0})
    state_b = {name: rows(path, name) for name, path in files.items()}
    return root, snapshot_id, state_a, state_b


def run_and_kill(root: Path, snapshot_id: str, marker: str, delay: float, pause: str | None) -> str:
    script = root / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CRASH_PAUSE_AT", None)
    if pause:
        env["CRASH_PAUSE_AT"] = pause
    child = subprocess.Popen(
        [sys.executable, str(script), str(root), snapshot_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        text=True,
    )
    seen = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            seen.append(line.strip())
            if line.strip() == marker:
                time.sleep(delay)
                break
        else:
            pytest.fail(f"child ended before '{marker}': {seen} {child.stderr.read()}")
    finally:
        with_group_killed(child)
    return " / ".join(seen)


def with_group_killed(child: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=10)


def integrity(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


@pytest.mark.parametrize(("marker", "delay", "pause", "expected"), KILL_POINTS)
async def test_killed_backup_or_rollback_leaves_whole_files_and_a_healthy_repository(
    crash_template: tuple[Path, str, dict, dict],
    tmp_path: Path,
    marker: str,
    delay: float,
    pause: str | None,
    expected: str | None,
) -> None:
    template, snapshot_id, state_a, state_b = crash_template
    root = tmp_path / "run"
    shutil.copytree(template, root)
    seen = await asyncio.to_thread(run_and_kill, root, snapshot_id, marker, delay, pause)

    for name in ROLLED_BACK:
        path = root / "data" / f"{name}.sqlite3"
        assert integrity(path) == "ok", (name, seen)
        allowed = {"old": [state_b[name]], "new": [state_a[name]]}.get(
            expected or "", [state_a[name], state_b[name]]
        )
        assert rows(path, name) in allowed, (name, expected, seen)

    manager = await BackupManager.open(*manager_config(root))
    assert not list((root / "data").glob(".ers-*")), seen
    assert not list((root / "data").glob("*.ers-old-*")), seen
    check = await manager.check()
    assert check.ok, (check.output_tail, seen)
    write_conversations(root / "data" / "conversations.sqlite3", 1, start=10_000)
    after = await manager.create(None, "manual")
    assert after.snapshot_id, seen
