"""Deleting files nobody needs any more on a background thread."""

from __future__ import annotations

from pathlib import Path

from backup.discard import delete_soon, empty_soon


def test_empty_soon_empties_the_folder_at_once_and_the_trash_goes_later(tmp_path: Path) -> None:
    staging, scratch = tmp_path / "staging", tmp_path / "scratch"
    staging.mkdir()
    (staging / "conversations.sqlite3").write_bytes(b"x" * 1_000_000)
    (staging / "sub").mkdir()
    (staging / "sub" / "f").write_text("y")
    thread = empty_soon(staging, scratch)
    assert staging.is_dir() and not list(staging.iterdir())
    assert thread is not None
    thread.join(10)
    assert not list(scratch.iterdir())


def test_empty_soon_on_an_empty_or_missing_folder_starts_nothing(tmp_path: Path) -> None:
    assert empty_soon(tmp_path / "missing", tmp_path / "scratch") is None
    (tmp_path / "empty").mkdir()
    assert empty_soon(tmp_path / "empty", tmp_path / "scratch") is None


def test_delete_soon_unlinks_every_path_and_ignores_missing_ones(tmp_path: Path) -> None:
    files = [tmp_path / "a", tmp_path / "b"]
    for f in files:
        f.write_text("old")
    thread = delete_soon([*files, tmp_path / "never-there"])
    assert thread is not None
    thread.join(10)
    assert not list(tmp_path.iterdir())
    assert delete_soon([]) is None
