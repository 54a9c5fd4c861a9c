"""A test rollback's rows added back, removed and changed per table, by primary key, over
real SQLite files: the live one read beside its writer, the restored one immutable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from backup.row_diff import RowChanges, TableRead, changes_between, compare, sqlite_changes
from backup.staging import table_row_counts


def make(path: Path, rows: list[tuple[int, str]], loose: list[str]) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("CREATE TABLE pairs (a TEXT, b TEXT, n INT, PRIMARY KEY (b, a))")
    db.execute("CREATE TABLE notes (text TEXT)")  # no key: whole rows are compared
    db.executemany("INSERT INTO items VALUES (?, ?)", rows)
    db.executemany("INSERT INTO pairs VALUES (?, ?, ?)", [("x", "y", 1), ("x", "z", 2)])
    db.executemany("INSERT INTO notes VALUES (?)", [(n,) for n in loose])
    db.commit()
    db.close()


def test_rows_added_back_removed_and_changed_per_table(tmp_path: Path) -> None:
    live, restored = tmp_path / "live.sqlite3", tmp_path / "restored.sqlite3"
    make(live, [(1, "a"), (2, "B"), (4, "d")], ["keep", "new", "new"])
    make(restored, [(1, "a"), (2, "b"), (3, "c")], ["keep", "old"])
    db = sqlite3.connect(live)
    db.execute("UPDATE pairs SET n = 5 WHERE a = 'x' AND b = 'z'")
    db.commit()
    # The live file stays open for writing, as the service holds it.
    now = table_row_counts(live, live=True)
    then = table_row_counts(restored, live=False)
    changes = sqlite_changes(live, restored, now, then)
    db.close()
    assert changes == {
        "items": RowChanges(added=1, removed=1, changed=1),  # 3 back, 4 gone, 2 as it was
        "pairs": RowChanges(added=0, removed=0, changed=1),  # the key is (b, a)
        "notes": RowChanges(added=1, removed=2, changed=None),
    }


def test_a_table_on_one_side_only_or_too_large_is_not_compared() -> None:
    keyed = TableRead([((1,), ("a",))], keyed=True)
    assert compare(keyed, TableRead([], keyed=True)) == RowChanges(0, 1, 0)
    assert changes_between({"t": keyed, "big": None}, {"t": keyed, "big": keyed}) == {
        "t": RowChanges(0, 0, 0)
    }
    assert changes_between({"only_now": keyed}, {"only_then": keyed}) == {}
