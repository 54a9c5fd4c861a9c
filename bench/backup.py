"""Backups and rollbacks through BackupManager against bare restic, side by side in one run.

About 100 MB of SQLite state (conversations appended to, a few budgets and profiles edited
between backups) lives in a temporary folder. Each round changes the state, then times the
manager's backup (consistent copy included) and a bare `restic backup` of the same files into
a second repository, in alternating order; then a rollback against a bare `restic restore` of
the same snapshot. Files the manager deletes in the background (its staged copy, the files a
rollback replaced) are waited for before every timed operation, so neither side runs beside
them. Medians are compared. Last lines:
``backup_growth_ratio`` (repository growth per incremental backup / state size, target <= 0.05),
``backup_wrapper_ratio`` (target <= 1.15), ``rollback_vs_restore_ratio`` (target <= 1.3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from backup import BackupConfig, BackupManager, RepositoryConfig
from backup.discard import settle
from backup.repository import open_identified

COMPONENTS = ("conversations", "budgets", "profiles", "system_state", "incidents")
WORDS = [
    "protein", "breakfast", "oats", "salmon", "rice", "budget", "rent", "groceries", "squat",
    "deadlift", "rest", "day", "calories", "week", "plan", "dinner", "lunch", "snack",
    "savings", "coffee", "run", "stretch", "sleep", "water", "goal",
]  # fmt: skip


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def create_state(data: Path, target_bytes: int, rng: random.Random) -> None:
    """Realistic stores: conversations grow by time; the rest are small and edited in place."""
    db = sqlite3.connect(data / "conversations.sqlite3")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY, user_id TEXT, role TEXT, "
        "text TEXT, created_at REAL)"
    )
    db.execute("CREATE INDEX conversations_by_time ON conversations (created_at)")
    turn = 0
    while (data / "conversations.sqlite3").stat().st_size < target_bytes:
        db.executemany(
            "INSERT INTO conversations (user_id, role, text, created_at) VALUES (?, ?, ?, ?)",
            [
                (
                    f"user-{rng.randrange(500)}",
                    rng.choice(("user", "assistant")),
                    sentence(rng, rng.randrange(20, 120)),
                    1.7e9 + turn + i,
                )
                for i in range(5000)
            ],
        )
        db.commit()
        turn += 5000
    db.close()
    small = {
        "budgets": "CREATE TABLE budgets (user_id TEXT, category TEXT, amount REAL, "
        "PRIMARY KEY (user_id, category))",
        "profiles": "CREATE TABLE profiles (user_id TEXT PRIMARY KEY, goal TEXT, notes TEXT)",
        "system_state": "CREATE TABLE system_state (key TEXT PRIMARY KEY, value TEXT)",
        "incidents": "CREATE TABLE incidents (id INTEGER PRIMARY KEY, kind TEXT, detail TEXT)",
    }
    for name, schema in small.items():
        db = sqlite3.connect(data / f"{name}.sqlite3")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(schema)
        db.commit()
        db.close()
    with sqlite3.connect(data / "budgets.sqlite3") as db:
        db.executemany(
            "INSERT INTO budgets VALUES (?, ?, ?)",
            [(f"user-{u}", c, 100.0) for u in range(500) for c in ("food", "gym", "rent")],
        )
    with sqlite3.connect(data / "profiles.sqlite3") as db:
        db.executemany(
            "INSERT INTO profiles VALUES (?, ?, ?)",
            [(f"user-{u}", "strength", sentence(rng, 40)) for u in range(500)],
        )


def change_state(data: Path, rng: random.Random, round_number: int) -> None:
    """What a busy interval between two backups writes."""
    with contextlib.closing(sqlite3.connect(data / "conversations.sqlite3")) as db, db:
        last = db.execute("SELECT max(created_at) FROM conversations").fetchone()[0] or 0
        db.executemany(
            "INSERT INTO conversations (user_id, role, text, created_at) VALUES (?, ?, ?, ?)",
            [
                (f"user-{rng.randrange(500)}", "user", sentence(rng, 60), last + 1 + i)
                for i in range(300)
            ],
        )
    with contextlib.closing(sqlite3.connect(data / "budgets.sqlite3")) as db, db:
        for _ in range(3):
            db.execute(
                "UPDATE budgets SET amount = ? WHERE user_id = ?",
                (rng.randrange(50, 900), f"user-{rng.randrange(500)}"),
            )
    with contextlib.closing(sqlite3.connect(data / "profiles.sqlite3")) as db, db:
        for _ in range(2):
            db.execute(
                "UPDATE profiles SET notes = ? WHERE user_id = ?",
                (sentence(rng, 40), f"user-{rng.randrange(500)}"),
            )
    with contextlib.closing(sqlite3.connect(data / "system_state.sqlite3")) as db, db:
        db.execute(
            "INSERT OR REPLACE INTO system_state VALUES ('round', ?)",
            (str(round_number),),
        )


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def state_size(data: Path) -> int:
    return sum((data / f"{c}.sqlite3").stat().st_size for c in COMPONENTS)


def restic_env(config: RepositoryConfig) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env.update(
        RESTIC_REPOSITORY=config.repository,
        RESTIC_PASSWORD_FILE=str(config.password_file),
        RESTIC_CACHE_DIR=str(config.cache_dir),
    )
    return env


def bare_restic(args: list[str], config: RepositoryConfig, cwd: Path | None = None) -> float:
    settle()  # the manager's deferred file deletions must not run beside the bare side
    started = time.perf_counter()
    subprocess.run(
        ["restic", *args],
        env=restic_env(config),
        cwd=cwd,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


PAUSES: list[float] = []  # how long each rollback held the writers paused


@contextlib.asynccontextmanager
async def no_writers() -> AsyncIterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        PAUSES.append(time.perf_counter() - started)


async def measure(root: Path, size_mb: int, rounds: int) -> dict[str, list[float]]:
    rng = random.Random(7)
    data = root / "data"
    data.mkdir()
    create_state(data, size_mb * 1_000_000, rng)
    wrapped = RepositoryConfig(str(root / "wrapped"), root / "pw-wrapped", cache_dir=root / "c1")
    components = {c: data / f"{c}.sqlite3" for c in COMPONENTS}
    manager = await BackupManager.open(
        wrapped, BackupConfig(components, root / "work"), may_create=True
    )
    # The bare repository is a copy of the fresh, empty wrapped one. `restic init` calibrates
    # the key's scrypt cost on the spot, so two inits can differ by half (p=6 against p=9,
    # 0.3 s per command), and that, not the wrapper, would decide backup_wrapper_ratio.
    shutil.copytree(root / "wrapped", root / "bare")
    bare = RepositoryConfig(str(root / "bare"), root / "pw-wrapped", cache_dir=root / "c2")
    await open_identified(bare)
    first = await manager.create(None, "scheduled")
    bare_restic(["backup", "-q", "."], bare, cwd=data)

    results: dict[str, list[float]] = {
        k: [] for k in ("wrapper", "bare", "growth", "roll", "restore")
    }
    results["paused"] = PAUSES
    for number in range(rounds):
        change_state(data, rng, number)
        raw = state_size(data)
        for side in ("wrapper", "bare") if number % 2 == 0 else ("bare", "wrapper"):
            if side == "wrapper":
                settle()
                before = folder_size(Path(wrapped.repository))
                started = time.perf_counter()
                await manager.create(None, "scheduled")
                results["wrapper"].append(time.perf_counter() - started)
                results["growth"].append((folder_size(Path(wrapped.repository)) - before) / raw)
            else:
                results["bare"].append(bare_restic(["backup", "-q", "."], bare, cwd=data))

    assert first.snapshot_id is not None
    for number in range(rounds):
        change_state(data, rng, 100 + number)  # the state moved on since the last backup
        target = root / "restore-target"
        for side in ("roll", "restore") if number % 2 == 0 else ("restore", "roll"):
            if side == "roll":
                settle()
                started = time.perf_counter()
                await manager.rollback(first.snapshot_id, None, "bench", no_writers, lambda: None)
                results["roll"].append(time.perf_counter() - started)
            else:
                restore = ["restore", first.snapshot_id, "--target", str(target)]
                results["restore"].append(bare_restic(restore, wrapped))
                shutil.rmtree(target)
    return results


def report(results: dict[str, list[float]], state_bytes: int) -> dict[str, float]:
    med = {k: statistics.median(v) for k, v in results.items()}
    ratios = {
        "backup_growth_ratio": med["growth"],
        "backup_wrapper_ratio": med["wrapper"] / med["bare"],
        "rollback_vs_restore_ratio": med["roll"] / med["restore"],
    }
    print(f"state size: {state_bytes / 1e6:.1f} MB, rounds: {len(results['wrapper'])}")
    print(f"{'measure':<34}{'median':>10}{'min':>10}{'max':>10}")
    rows = [
        ("BackupManager.create (s)", "wrapper"),
        ("bare restic backup (s)", "bare"),
        ("repository growth / state size", "growth"),
        ("BackupManager.rollback (s)", "roll"),
        ("bare restic restore (s)", "restore"),
        ("writers paused in a rollback (s)", "paused"),
    ]
    for label, key in rows:
        values = results[key]
        print(f"{label:<34}{med[key]:>10.4f}{min(values):>10.4f}{max(values):>10.4f}")
    anchors = {
        "backup_growth_ratio": f"anchor state {state_bytes / 1e6:.1f} MB; the repository grew "
        f"{med['growth'] * state_bytes / 1e6:.2f} MB per incremental backup (median)",
        "backup_wrapper_ratio": f"anchor bare restic backup {med['bare']:.4f} s; "
        f"BackupManager.create {med['wrapper']:.4f} s",
        "rollback_vs_restore_ratio": f"anchor bare restic restore {med['restore']:.4f} s; "
        f"BackupManager.rollback {med['roll']:.4f} s (writers paused {med['paused']:.4f} s of it)",
    }
    for name, value in ratios.items():
        print(anchors[name])
        print(f"{name}={value:.3f}")
    return ratios


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ers-bench-backup-") as folder:
        root = Path(folder)
        results = asyncio.run(measure(root, args.size_mb, args.rounds))
        return report(results, state_size(root / "data"))


if __name__ == "__main__":
    main()
