"""``python -m bench --only X --readme`` keeps the other rows and names the run of each."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.__main__ as bench_main

HEAD = (
    "| benchmark | figure | measured | target | met | anchor (same run) |\n"
    "|---|---|---|---|---|---|"
)


def row(module: str, value: str) -> str:
    return f"| `{module}` | `x` | {value} | <= 1 | yes | a |"


def header(command: str) -> str:
    return f"Measured by `{command}` on 2026-12-03, this machine, load average 0.5 when it began."


def test_rows_kept_over_two_partial_runs_keep_naming_their_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_main, "ROOT", tmp_path)
    modules = ["bench.chat", "bench.breaker", "bench.remote_agent"]
    monkeypatch.setattr(bench_main, "BENCHMARKS", modules)
    full = [*HEAD.splitlines(), *(row(m, "1.0") for m in modules)]
    (tmp_path / "README.md").write_text("# x\n")
    bench_main.write_readme(full, header("make bench"), [])

    only = "python -m bench --only bench.chat bench.remote_agent"
    partial = [*HEAD.splitlines(), row("bench.chat", "2.0"), row("bench.remote_agent", "2.0")]
    bench_main.write_readme(partial, header(only), ["bench.breaker"])
    latest = "python -m bench --only bench.chat"
    bench_main.write_readme(
        [*HEAD.splitlines(), row("bench.chat", "3.0")],
        header(latest),
        ["bench.breaker", "bench.remote_agent"],
    )

    text = (tmp_path / "README.md").read_text()
    said = next(line for line in text.splitlines() if line.startswith("Measured by"))
    # Before: the second partial run's header dropped `make bench`, the run the breaker
    # rows came from, and said they were from the first partial run.
    assert said.startswith(f"Measured by `{latest}`")
    assert said.index(f"`{only}`") < said.index("`make bench`"), said
    assert row("bench.breaker", "1.0") in text and row("bench.remote_agent", "2.0") in text
    assert row("bench.chat", "3.0") in text


def test_a_run_no_row_comes_from_any_more_is_not_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_main, "ROOT", tmp_path)
    modules = ["bench.chat", "bench.breaker", "bench.remote_agent"]
    monkeypatch.setattr(bench_main, "BENCHMARKS", modules)
    (tmp_path / "README.md").write_text("# x\n")
    full = [*HEAD.splitlines(), *(row(m, "1.0") for m in modules)]
    bench_main.write_readme(full, header("make bench"), [])
    first = "python -m bench --only bench.chat"
    bench_main.write_readme(
        [*HEAD.splitlines(), row("bench.chat", "2.0")],
        header(first),
        ["bench.breaker", "bench.remote_agent"],
    )
    again = "python -m bench --only bench.chat bench.remote_agent"
    partial = [*HEAD.splitlines(), row("bench.chat", "3.0"), row("bench.remote_agent", "3.0")]
    bench_main.write_readme(partial, header(again), ["bench.breaker"])

    said = next(
        line
        for line in (tmp_path / "README.md").read_text().splitlines()
        if line.startswith("Measured by")
    )
    # bench.chat was measured again: the first partial run owns no row any more.
    assert f"`{first}`" not in said, said
    assert said == (
        f"{header(again)} The rows of `bench.breaker` are from an earlier run, "
        f"m{header('make bench')[1:]}"
    )
