"""Pipes between programs: a reader sees the end of its input only after its writer succeeded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from backup.pipeline import Pipeline
from backup.process import run_program

READER = "import sys; data = sys.stdin.buffer.read(); open(sys.argv[1], 'wb').write(data)"


async def program(args: list[str], *, stdin: int | None = None, stdout: int | None = None) -> None:
    output = await run_program(args[0], args[1:], env={}, timeout=30, stdin=stdin, stdout=stdout)
    if output.exit_code != 0:
        raise RuntimeError(f"{args[0]} exited with {output.exit_code}")


def writer_and_reader(script: str, received: Path) -> Pipeline:
    pipeline = Pipeline()
    read_end, write_end = pipeline.pipe()
    pipeline.add("writer", program(["/bin/sh", "-c", script], stdout=write_end))
    pipeline.add("reader", program([sys.executable, "-c", READER, str(received)], stdin=read_end))
    pipeline.hold_open(write_end, until=["writer"])
    return pipeline


async def test_the_reader_gets_everything_once_the_writer_succeeded(tmp_path: Path) -> None:
    received = tmp_path / "received"
    pipeline = writer_and_reader("printf whole", received)
    await pipeline.run()
    assert received.read_bytes() == b"whole"
    assert set(pipeline.finished_at) == {"writer", "reader"}


async def test_a_failed_writer_stops_the_reader_before_it_sees_the_end(tmp_path: Path) -> None:
    received = tmp_path / "received"
    pipeline = writer_and_reader("printf partial; exit 3", received)
    with pytest.raises(RuntimeError, match="exited with 3"):
        await pipeline.run()
    assert pipeline.failed == "writer"
    assert not received.exists()  # the half-written input was never taken for a whole one


@pytest.mark.parametrize(("script", "expected"), [("printf whole", b"whole;ok"), ("exit 3", None)])
async def test_a_hold_ends_the_pipe_with_its_last_line_only_after_the_writer_succeeded(
    tmp_path: Path, script: str, expected: bytes | None
) -> None:
    received = tmp_path / "received"
    pipeline = Pipeline()
    read_end, write_end = pipeline.pipe()
    pipeline.add("writer", program(["/bin/sh", "-c", script], stdout=write_end))
    pipeline.add("reader", program([sys.executable, "-c", READER, str(received)], stdin=read_end))
    pipeline.hold_open(write_end, until=["writer"], then=b";ok")
    if expected is None:
        with pytest.raises(RuntimeError, match="exited with 3"):
            await pipeline.run()
        assert not received.exists()
    else:
        await pipeline.run()
        assert received.read_bytes() == expected
