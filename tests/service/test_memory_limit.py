"""Which limit the memory check measures against: the cgroup's when there is one, read from
fake cgroup trees here (v2 and v1, with and without a cgroup namespace)."""

from __future__ import annotations

from pathlib import Path

import psutil

from service.health.checks import MemoryCheck, cgroup_memory_limit, read_memory

GIB = 1 << 30


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_v2_inside_a_container_reads_the_namespace_root(tmp_path: Path) -> None:
    write(tmp_path / "cgroup/memory.max", f"{GIB}\n")
    membership = write(tmp_path / "self", "0::/\n")
    assert cgroup_memory_limit(tmp_path / "cgroup", membership) == GIB


def test_v2_without_a_namespace_takes_the_tightest_limit_up_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "memory.max", "max\n")
    write(root / "system.slice/memory.max", f"{2 * GIB}\n")
    write(root / "system.slice/ers.service/memory.max", "max\n")
    membership = write(tmp_path / "self", "0::/system.slice/ers.service\n")
    assert cgroup_memory_limit(root, membership) == 2 * GIB


def test_v1_reads_the_memory_controller_and_ignores_its_unlimited_value(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    membership = write(tmp_path / "self", "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n")
    write(root / "memory/docker/abc/memory.limit_in_bytes", f"{512 << 20}\n")
    assert cgroup_memory_limit(root, membership) == 512 << 20
    write(root / "memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n")
    assert cgroup_memory_limit(root, membership) is None


def test_no_limit_anywhere_means_the_host_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "memory.max", "max\n")
    membership = write(tmp_path / "self", "0::/\n")
    reading = read_memory(root, membership)
    assert reading.limit_source == "host"
    assert reading.limit_bytes == psutil.virtual_memory().total
    # Nothing readable at all (not Linux, or /sys not mounted): the host as well.
    assert read_memory(tmp_path / "none", tmp_path / "none").limit_source == "host"


async def test_the_memory_check_reports_where_its_limit_comes_from(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "memory.max", f"{64 * GIB}\n")
    membership = write(tmp_path / "self", "0::/\n")
    result = await MemoryCheck(lambda: read_memory(root, membership)).run()
    assert result.figures["limitSource"] == "cgroup"
    assert result.figures["limitBytes"] == 64 * GIB
    assert 0 < result.figures["rssBytes"] < 64 * GIB
