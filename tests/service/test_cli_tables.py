"""What ``ers backup`` draws for replies the integration tests cannot provoke on demand: a
create that found nothing changed, a test rollback whose table comes or goes, a snapshot
whose copy fails its check; and flags refused in their own terms before any request."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from service.cli.backup_tables import TABLES, undo_command
from service.cli.main import main
from service.cli.output import short_id, when


def drawn(action: str, data: dict) -> str:
    out = Console(file=io.StringIO(), width=200, highlight=False)
    TABLES[action](out, data)
    return out.file.getvalue()  # type: ignore[attr-defined]


def test_test_rollback_rows_name_tables_that_come_back_or_go_and_failed_checks() -> None:
    text = drawn(
        "test-rollback",
        {
            "backupId": "5b02cf1f",
            "snapshotTime": "2026-12-03T07:30:50.927531Z",
            "snapshotReason": "manual",
            "components": {
                "budgets": {
                    "verification": {"integrity": "ok", "checksumMatches": False},
                    "tables": {
                        "_probe": {"rowsNow": 0, "rowsInSnapshot": 0},
                        "budgets": {
                            "rowsNow": 2,
                            "rowsInSnapshot": 5,
                            "added": 4,
                            "removed": 1,
                            "changed": 0,
                        },
                        "expenses": {"rowsNow": None, "rowsInSnapshot": 1},
                        "legacy": {"rowsNow": 3, "rowsInSnapshot": None},
                    },
                }
            },
        },
    )
    rows = {
        line.split()[1]: line.rstrip()
        for line in text.splitlines()[2:]
        if line.startswith("budgets ")
    }
    assert set(rows) == {"budgets", "expenses", "legacy"}
    assert rows["budgets"].split()[2:] == ["2", "5", "4", "1", "0"]
    assert "budgets.expenses: the table comes back" in text
    assert "budgets.legacy: the table goes away" in text
    assert "budgets: the snapshot's copy fails its check" in text


def test_a_test_rollback_of_an_unreadable_copy_claims_no_table_goes_away() -> None:
    """Before: "budgets.budgets: the table goes away" for each live table, and "checksum
    None", for a snapshot whose copy is not a database: the rollback would fail its verify
    step and change nothing, so no table goes anywhere."""
    text = drawn(
        "test-rollback",
        {
            "backupId": "1f1e1e49",
            "snapshotTime": "2026-12-05T21:24:35.469850Z",
            "snapshotReason": "manual",
            "components": {
                "budgets": {
                    "verification": {
                        "integrity": "unreadable: file is not a database",
                        "checksumMatches": None,
                    },
                    "tables": {
                        "budgets": {"rowsNow": 1, "rowsInSnapshot": None},
                        "expenses": {"rowsNow": 71, "rowsInSnapshot": None},
                    },
                }
            },
        },
    )
    assert "goes away" not in text and "None" not in text
    assert (
        "budgets: the snapshot's copy fails its check (integrity unreadable: file is not a "
        "database, checksum not recorded): a rollback to it fails its verify step and leaves "
        "the live data unchanged"
    ) in " ".join(text.split())


def test_a_drill_of_one_snapshot_per_component_names_each_on_its_row() -> None:
    """Before: "restore drill passed: newest snapshot <one of them>", the others unnamed."""
    ids = {"budgets": "6568ea4b" + "1" * 56, "profiles": "8dfa07fa" + "2" * 56}
    files = [
        {"component": c, "backupId": i, "integrity": "ok", "checksumMatches": None, "size": 10}
        for c, i in ids.items()
    ]
    reply = {"ok": True, "backupId": ids["profiles"], "durationSeconds": 5.8, "files": files}
    text = drawn("drill", reply)

    header, *rows, verdict = text.splitlines()
    assert header.split()[:2] == ["COMPONENT", "SNAPSHOT"]
    assert [row.split()[:2] for row in rows] == [["budgets", "6568ea4b"], ["profiles", "8dfa07fa"]]
    assert verdict == "restore drill passed: 2 snapshots, each component's newest, 5.8 s"


def test_an_init_that_replaced_a_repository_names_both_by_their_short_ids() -> None:
    new, old = "3632a29a" + "0" * 56, "178c40da" + "1" * 56
    reply = {"repositoryId": new, "created": True, "previousRepositoryId": old}

    assert drawn("init", reply).splitlines() == [
        "created repository 3632a29a",
        "(it replaces repository 178c40da)",
    ]


def test_ids_and_times_are_shown_one_way() -> None:
    assert short_id("85453c5b" + "0" * 56) == "85453c5b" == short_id("85453c5b")
    assert short_id(None) == "-"
    assert when("2026-12-03T07:30:52.139533Z") == "2026-12-03 07:30:52Z"
    assert when("2026-12-03T07:30:52+00:00") == "2026-12-03 07:30:52Z"


def test_the_breakers_total_adds_up_with_forced_and_disabled_ones() -> None:
    from service.cli.breakers import _table

    def breaker(state: str) -> dict:
        return {"state": state, "failureCount": 0, "failureRate": 0, "rejectedCalls": 0}

    report = {
        "breakers": {
            "nutrition": breaker("closed"),
            "workout": breaker("forced_open"),
            "budget": breaker("open"),
            "router": breaker("disabled"),
        },
        "totals": {
            "total": 4,
            "open": 2,
            "closed": 1,
            "half_open": 0,
            "forced_open": 1,
            "disabled": 1,
        },
    }
    out = Console(file=io.StringIO(), width=200, highlight=False)
    _table(out, report)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "total 4: 1 closed, 2 open (1 forced), 0 half-open, 1 disabled" in text


def test_a_breakers_row_names_its_state_in_words_and_marks_a_cut_reason() -> None:
    # Before: "forced_open", and a long reason cut at 80 characters without a mark, so the
    # row read as the whole reason; `ers breakers show` prints it whole.
    from service.cli.breakers import _table

    reason = "a bad deploy of the budget agent that answers with the wrong currency " * 2
    forced = {"state": "forced_open", "failureCount": 0, "failureRate": None, "rejectedCalls": 0}
    forced["forced"] = {"source": "admin:loopback", "reason": reason.strip()}
    trial = {"state": "half_open", "failureCount": 3, "failureRate": 0.5, "rejectedCalls": 2}
    totals = {"total": 2, "open": 1, "closed": 0, "half_open": 1, "forced_open": 1}
    out = Console(file=io.StringIO(), width=300, highlight=False)
    _table(out, {"breakers": {"budget": forced, "workout": trial}, "totals": totals})
    rows = out.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert rows[1].split()[:2] == ["budget", "forced"] and rows[1].split()[2] == "open"
    assert rows[1].endswith("…") and f"admin:loopback: {reason[:40]}" in rows[1]
    assert rows[2].split()[:2] == ["workout", "half-open"]


@pytest.mark.parametrize(
    "ttl,said",
    [("0", "must be more than 0 and at most 604800 seconds"), ("abc", "'abc' is not a number")],
)
def test_a_force_open_ttl_out_of_range_is_refused_in_the_flags_terms(
    ttl: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: the service's 422 named its JSON field, "ttlSeconds: Input should be greater
    # than 0", for a flag called --ttl.
    with pytest.raises(SystemExit) as exited:
        main(["breakers", "force-open", "workout", "--reason", "bad deploy", "--ttl", ttl])
    assert exited.value.code == 2
    assert f"argument --ttl: {said}" in capsys.readouterr().err


def test_an_incident_list_counts_one_incident_in_the_singular() -> None:
    from service.cli.incidents import _incident_list

    incident = {
        "id": "INC_1",
        "status": "open",
        "classification": {"type": "network", "severity": "high"},
        "component": "budget",
        "count": 1,
        "message": "boom",
    }
    out = Console(file=io.StringIO(), width=200, highlight=False)
    _incident_list(out, {"incidents": [incident], "total": 1})
    assert out.file.getvalue().splitlines()[-1] == "1 incident"  # type: ignore[attr-defined]
    out = Console(file=io.StringIO(), width=200, highlight=False)
    _incident_list(out, {"incidents": [], "total": 1, "offset": 5})
    assert out.file.getvalue().splitlines()[-1] == "none of 1 incident from offset 5"  # type: ignore[attr-defined]


def test_the_undo_names_the_token_file_by_its_absolute_path(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    # Before: as written, so a relative path worked only from the directory it was run in.
    import argparse

    from service.cli.backup import _where

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(url="http://127.0.0.1:8100", token_file=Path("admin.token"))
    assert _where(args) == [
        "--url",
        "http://127.0.0.1:8100",
        "--token-file",
        str(tmp_path / "admin.token"),
    ]


def test_text_from_the_service_is_printed_as_written_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: a forced open's reason "see [/var/log]" (or an agent's error naming a path in
    # brackets) was read as rich's markup, and `ers breakers list` ended in a MarkupError
    # traceback for as long as the breaker said so; an agent's error with a line break or an
    # escape sequence broke the row and reached the terminal as a command.
    import argparse

    from service.cli.breakers import _table
    from service.cli.output import emit

    def breaker(state: str, error: str | None, forced: dict | None = None) -> dict:
        return {
            "state": state,
            "failureCount": 1,
            "failureRate": 0,
            "rejectedCalls": 0,
            "lastError": error,
            "forced": forced,
        }

    report = {
        "breakers": {
            "budget": breaker("forced_open", None, {"source": "admin", "reason": "see [/var/log]"}),
            "workout": breaker("closed", "SimulatedNetworkError: bad\nthing \x1b[31mRED\u202eevil"),
        },
        "totals": {"total": 2, "open": 1, "closed": 1, "half_open": 0, "forced_open": 1},
    }
    emit(argparse.Namespace(output="table", url="http://127.0.0.1:1"), report, _table)
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "admin: see [/var/log]" in text
    workout = next(line for line in lines if line.startswith("workout"))
    assert workout.endswith("SimulatedNetworkError: bad\\nthing \\x1b[31mRED\\u202eevil")
    assert "\x1b" not in text and "\u202e" not in text
    assert len(lines) == 4  # the header, two rows and the total


def test_a_refusal_quoting_an_agents_error_is_one_line_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: `ers breakers reset` printed the 409 of a probe whose error held a line break
    # on two lines of stderr, and an escape sequence in it reached the terminal.
    from service.cli import breakers
    from service.cli.output import REFUSED, CliError

    def refused(*args: object, **kwargs: object) -> None:
        raise CliError(
            "refused (409): its health probe still fails (SimulatedNetworkError: line one\n"
            "line two \x1b[2J); fix the cause or reset with force",
            REFUSED,
        )

    monkeypatch.setattr(breakers, "call", refused)
    assert main(["breakers", "reset", "budget"]) == REFUSED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err
    assert "line one\\nline two \\x1b[2J);" in err


def test_a_rollback_over_a_damaged_file_names_it_and_leaves_it_out_of_the_undo() -> None:
    """Its bytes are in the safety snapshot as found, which no rollback puts back: an undo
    naming it always failed at its verify step, the healthy components with it."""
    reply = {
        "backupId": "3f2a1b4c" + "0" * 56,
        "safetyBackupId": "178c40da" + "0" * 56,
        "components": ["budgets", "profiles"],
        "durationSeconds": 1.2,
        "keptAsFound": ["budgets"],
    }
    undo = undo_command(reply, offline=True)
    assert undo == (
        'ers backup rollback 178c40da --components profiles --reason "undo the rollback to '
        '3f2a1b4c" --yes --offline'
    )
    text = drawn("rollback", {**reply, "undoCommand": undo})
    assert "budgets was damaged: snapshot 178c40da keeps its bytes as found" in text
    assert "(restic dump 178c40da /budgets.sqlite3)" in text and undo in text
    alone = {**reply, "components": ["budgets"]}
    assert undo_command(alone, offline=True) is None
    text = drawn("rollback", {**alone, "undoCommand": None})
    assert "to undo this" not in text and "budgets was damaged" in text


def test_piped_output_keeps_each_line_whole(capsys: pytest.CaptureFixture[str]) -> None:
    """Piped (not a terminal), a footer or a cell of 300 characters was folded at 250."""
    from service.cli.output import new_table, stdout

    out = stdout()
    assert not out.is_terminal
    footer = "the list above is the last one read; " + "word " * 60 + "starts a new repository"
    out.print(footer)
    table = new_table("ACTOR", "DETAIL")
    table.add_row("admin", "run " + "r" * 300)
    out.print(table)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == footer.rstrip()
    assert lines[2].startswith("admin") and lines[2].endswith("r" * 300), lines


def test_a_backup_list_counts_one_snapshot_in_the_singular() -> None:
    snapshot = {
        "backupId": "5b02cf1f",
        "time": "2026-12-03T07:30:50Z",
        "reason": "manual",
        "components": ["budgets"],
    }
    one = {"backups": [snapshot], "available": 1, "lastBackup": snapshot["time"]}
    assert "1 snapshot, last 2026-12-03 07:30:50Z" in drawn("list", one)
    two = {"backups": [snapshot, snapshot], "available": 2, "lastBackup": snapshot["time"]}
    assert "2 snapshots, last" in drawn("list", two)


def test_a_snapshot_a_rollback_put_aside_is_marked_in_the_list() -> None:
    entry = {"time": "2026-12-01T10:00:00Z", "components": ["budgets"], "hostname": "h"}
    data = {
        "backups": [
            entry | {"backupId": "a" * 64, "reason": "manual", "putAside": ["budgets"]},
            entry | {"backupId": "b" * 64, "reason": "scheduled", "putAside": []},
            {**entry, "components": ["budgets", "profiles"]}
            | {"backupId": "c" * 64, "reason": "shutdown", "putAside": ["budgets"]},
        ],
        "available": 2,
        "lastBackup": "2026-12-01T10:00:00Z",
    }
    rows = drawn("list", data).splitlines()
    assert any("aaaaaaaa" in row and "manual (put aside)" in row for row in rows), rows
    assert any("bbbbbbbb" in row and "scheduled" in row and "put aside" not in row for row in rows)
    # Of a snapshot of two components, the one put aside is named: the other is live.
    assert any("cccccccc" in row and "shutdown (budgets put aside)" in row for row in rows), rows
