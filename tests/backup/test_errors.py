"""Snapshot ids are checked before they reach a command line; restic's answers map to names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup.errors import (
    DiskFull,
    InvalidBackupReason,
    InvalidSnapshotId,
    RepositoryLocked,
    RepositoryNotFound,
    RepositoryNotReached,
    ResticCommandFailed,
    SnapshotNotFound,
    WrongPassword,
    classify_failure,
)
from backup.inputs import validate_reason, validate_snapshot_id

REPO = "/srv/restic-repo"
PASSWORD_FILE = "/etc/ers/restic-password"


def classify(exit_code: int, stderr: str):
    return classify_failure(exit_code, stderr, repository=REPO, password_file=PASSWORD_FILE)


@pytest.mark.parametrize("good", ["a38395b0", "a38395b0445107524703707cb80f7b4cd0fc9cf936b55a71"])
def test_hex_ids_of_8_to_64_characters_are_accepted(good: str) -> None:
    assert validate_snapshot_id(good) == good


@pytest.mark.parametrize(
    "bad",
    ["--password-file=x", "-h", "latest", "a3839", "A38395B0", "a38395b0 --x", "0" * 65, ""],
)
def test_anything_else_is_refused_before_reaching_restic(bad: str) -> None:
    with pytest.raises(InvalidSnapshotId, match="not a snapshot id"):
        validate_snapshot_id(bad)


@given(st.text())
def test_no_accepted_id_can_start_an_option(text: str) -> None:
    try:
        accepted = validate_snapshot_id(text)
    except InvalidSnapshotId:
        return
    assert not accepted.startswith("-") and accepted.isalnum()


# restic 0.14: exit code 1 and a recognisable stderr
def test_wrong_password_0_14() -> None:
    error = classify(1, "Fatal: wrong password or no key found\n")
    assert isinstance(error, WrongPassword)
    assert PASSWORD_FILE in str(error)


def test_a_server_restic_cannot_reach_is_not_a_missing_repository() -> None:
    """restic 0.14 ends a refused connection with the question it asks of a missing
    repository; the address shown keeps the user and password out."""
    stderr = (
        'Fatal: unable to open config file: client.Head: Head "http://ers:***@127.0.0.1:9/ers/'
        'config": dial tcp 127.0.0.1:9: connect: connection refused\nIs there a repository at '
        "the following location?\nrest:http://ers:***@127.0.0.1:9/ers/\n"
    )
    address = "rest:http://ers:s3cret@127.0.0.1:9/ers"
    error = classify_failure(1, stderr, repository=address, password_file=PASSWORD_FILE)
    assert isinstance(error, RepositoryNotReached)
    assert "'rest:http://***@127.0.0.1:9/ers' cannot be reached (connection refused)" in str(error)
    missing = classify_failure(10, "", repository=address, password_file=PASSWORD_FILE)
    assert isinstance(missing, RepositoryNotFound) and "s3cret" not in str(missing)


def test_missing_repository_0_14() -> None:
    stderr = (
        "Fatal: unable to open config file: stat /srv/restic-repo/config: no such file or "
        "directory\nIs there a repository at the following location?\n/srv/restic-repo\n"
    )
    error = classify(1, stderr)
    assert isinstance(error, RepositoryNotFound)
    # Where it is, and both ways out: point at the moved repository, or start a new one.
    assert REPO in str(error) and "repository setting" in str(error)
    assert "`ers backup init` starts a new, empty one" in str(error)


def test_locked_0_14_names_the_holder() -> None:
    stderr = (
        "unable to create lock in backend: repository is already locked by PID 10480 on vm by "
        "root (UID 0, GID 0)\nlock was created at 2026-11-28 13:21:03 (1.5s ago)\n"
        "storage ID 1f566b2a\nthe `unlock` command can be used to remove stale locks\n"
    )
    error = classify(1, stderr)
    assert isinstance(error, RepositoryLocked)
    assert error.holder is not None
    assert (error.holder.pid, error.holder.hostname, error.holder.lock_id) == (
        10480,
        "vm",
        "1f566b2a",
    )
    assert "PID 10480 on vm" in str(error)


# restic 0.17 and later: dedicated exit codes, whatever the text
@pytest.mark.parametrize(
    ("exit_code", "expected"),
    [(10, RepositoryNotFound), (11, RepositoryLocked), (12, WrongPassword)],
)
def test_exit_codes_of_0_17(exit_code: int, expected: type) -> None:
    assert isinstance(classify(exit_code, "Fatal: something\n"), expected)


def test_locked_exclusively_0_17_text() -> None:
    stderr = (
        "Fatal: unable to create lock in backend: repository is already locked exclusively "
        "by PID 77 on host-b by ers (UID 1000, GID 1000)\n"
    )
    error = classify(11, stderr)
    assert isinstance(error, RepositoryLocked)
    assert error.holder is not None and error.holder.pid == 77
    assert error.holder.hostname == "host-b"


def test_disk_full() -> None:
    stderr = "Fatal: unable to save snapshot: write /repo/data/ab/x: no space left on device"
    assert isinstance(classify(1, stderr), DiskFull)


def test_unknown_snapshot() -> None:
    assert isinstance(classify(1, 'no matching ID found for prefix "deadbeef"'), SnapshotNotFound)


def test_other_failures_keep_the_end_of_stderr_on_one_line() -> None:
    error = classify(3, "warning: x\n" * 200 + "Fatal: the last words\n")
    assert isinstance(error, ResticCommandFailed)
    message = str(error)
    assert "exit" in message and message.endswith("Fatal: the last words")
    assert "\n" not in message and len(message) < 500


@pytest.mark.parametrize(
    "good", ["manual", "before-upgrade", "v2.3_rc1", "0day", "x" * 64, "pre-rollbacks"]
)
def test_short_tag_safe_reasons_are_accepted(good: str) -> None:
    assert validate_reason(good) == good


@pytest.mark.parametrize(
    "bad,words",
    [
        ("before upgrade", "no spaces"),
        ("a,b", "commas"),
        ("reason:x", "colons"),
        ("Upgrade", "lowercase"),
        ("-x", "start with"),
        ("x" * 65, "at most 64"),
        ("", "required"),
        # A rollback before an incident never goes back to one (`backup.lineage`).
        ("pre-rollback", "rollback's own safety snapshot"),
    ],
)
def test_reasons_that_cannot_be_a_tag_are_refused_saying_why(bad: str, words: str) -> None:
    with pytest.raises(InvalidBackupReason, match=words):
        validate_reason(bad)


@given(st.text(max_size=80))
def test_an_accepted_reason_is_one_restic_tag(value: str) -> None:
    try:
        validate_reason(value)
    except InvalidBackupReason:
        return
    assert value and len(value) <= 64
    assert not any(c in value for c in ",: \t\n")
