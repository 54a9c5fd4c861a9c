"""The off-host copy with the real restic binary, between two local repositories: the copy
restores to the same bytes, copies only what is new, keeps both passwords off the command
line, and reports failures as named reasons that the job's metrics count; the off-host
repository keeps what the local retention keeps, over its own list of snapshots."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from backup.identity import RepositoryIdentity
from backup.index import forget_unretained
from backup.offsite import OffsiteCopier, OffsiteCopyFailed, OffsiteRepository
from backup.restic import Restic
from service.backups.offsite import OffsiteMetrics, OffsiteRetention, copy_once
from service.settings import Settings
from service.web.app import create_app

pytestmark = pytest.mark.integration

SOURCE_PASSWORD = "source-password-1f3a"
DESTINATION_PASSWORD = "offsite-password-9c2e"
RESTIC_TIMEOUT_S = 120
CHUNK_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def restic_binary() -> str:
    path = shutil.which("restic")
    if path is None:
        pytest.skip("restic is not installed; `make system-test` installs it")
    return path


def restic(repository: Path, password_file: Path, cache: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env.update(
        RESTIC_REPOSITORY=str(repository),
        RESTIC_PASSWORD_FILE=str(password_file),
        RESTIC_CACHE_DIR=str(cache),
    )
    result = subprocess.run(
        ["restic", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=RESTIC_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class Repos:
    def __init__(self, root: Path, binary: str) -> None:
        self.root = root
        self.cache = root / "cache"
        self.source = root / "source-repo"
        self.destination = root / "offsite-repo"
        self.source_password = root / "source.pw"
        self.destination_password = root / "offsite.pw"
        self.source_password.write_text(SOURCE_PASSWORD)
        self.destination_password.write_text(DESTINATION_PASSWORD)
        self.data = root / "data"
        self.data.mkdir()
        self.binary = binary
        restic(self.source, self.source_password, self.cache, "init")

    def backup(self, name: str, content: str, *tags: str) -> None:
        (self.data / name).write_text(content)
        tagged = [arg for tag in ("ers", *tags) for arg in ("--tag", tag)]
        restic(self.source, self.source_password, self.cache, "backup", *tagged, str(self.data))

    def backup_component(self, component: str) -> None:
        """A snapshot of one component, of data no other snapshot holds (so a prune frees
        it once the snapshot is forgotten)."""
        content = os.urandom(CHUNK_BYTES // 2).hex()
        self.backup(f"{component}.db", content, f"component:{component}")

    def snapshots(self, repository: Path, password_file: Path) -> list[dict[str, object]]:
        out = restic(repository, password_file, self.cache, "snapshots", "--json")
        return json.loads(out)

    def local_ids(self) -> set[str]:
        return {str(s["id"]) for s in self.snapshots(self.source, self.source_password)}

    def offsite_originals(self) -> set[str]:
        """The local snapshot each off-host one is a copy of."""
        copies = self.snapshots(self.destination, self.destination_password)
        return {str(s["original"]) for s in copies}

    async def local_retention(self, keep_last: int) -> None:
        """What the service's retention does to the local repository after a backup."""
        source = Restic(str(self.source), self.source_password, cache_dir=self.cache)
        await forget_unretained(source, "ers", keep_last)

    def copier(self, binary: str | None = None, record: bool = False) -> OffsiteCopier:
        source = Restic(
            str(self.source),
            self.source_password,
            binary=binary or self.binary,
            cache_dir=self.cache,
        )
        target = OffsiteRepository(str(self.destination), self.destination_password)
        return OffsiteCopier(
            source,
            target,
            timeout=RESTIC_TIMEOUT_S,
            cache_dir=self.cache,
            record_file=self.root / "offsite-repository.json" if record else None,
        )


@pytest.fixture
def repos(tmp_path: Path, restic_binary: str) -> Repos:
    return Repos(tmp_path, restic_binary)


async def test_first_copy_creates_the_offsite_repository_and_restores_the_same_bytes(
    repos: Repos, tmp_path: Path
) -> None:
    repos.backup("budgets.db", "groceries 120\n")
    repos.backup("profiles.db", "u1 strength\n")
    assert not repos.destination.exists()

    result = await repos.copier().copy()

    assert (result.copied, result.skipped) == (2, 0)
    source = repos.snapshots(repos.source, repos.source_password)
    copied = repos.snapshots(repos.destination, repos.destination_password)
    assert sorted(s["time"] for s in copied) == sorted(s["time"] for s in source)
    assert all(s["tags"] == ["ers"] for s in copied)
    newest = max(copied, key=lambda s: s["time"])
    target = tmp_path / "restored"
    restic(
        repos.destination,
        repos.destination_password,
        repos.cache,
        "restore",
        str(newest["id"]),
        "--target",
        str(target),
    )
    restored = target / repos.data.relative_to("/")
    assert (restored / "budgets.db").read_text() == "groceries 120\n"
    assert (restored / "profiles.db").read_text() == "u1 strength\n"


async def test_later_copies_move_only_new_snapshots(repos: Repos) -> None:
    repos.backup("budgets.db", "groceries 120\n")
    copier = repos.copier()
    await copier.copy()

    again = await copier.copy()
    assert (again.copied, again.skipped) == (0, 1)

    repos.backup("budgets.db", "groceries 150\n")
    newer = await copier.copy()
    assert (newer.copied, newer.skipped) == (1, 1)
    assert len(repos.snapshots(repos.destination, repos.destination_password)) == 2


async def test_an_offsite_repository_gone_after_the_first_copy_is_not_made_anew(
    repos: Repos, tmp_path: Path
) -> None:
    """An unmounted backup disk leaves an empty folder at the off-host path: a new
    repository there would take the copies onto this host while every copy "succeeds"."""
    repos.backup("budgets.db", "groceries 120\n")
    await repos.copier(record=True).copy()
    shutil.move(repos.destination, tmp_path / "unmounted")

    with pytest.raises(OffsiteCopyFailed) as gone:
        await repos.copier(record=True).copy()
    assert gone.value.label == "repository_not_found"
    assert "gone from" in str(gone.value)
    assert not repos.destination.exists()

    restic(repos.destination, repos.destination_password, repos.cache, "init")
    with pytest.raises(OffsiteCopyFailed) as replaced:
        await repos.copier(record=True).copy()
    assert replaced.value.label == "repository_replaced"

    shutil.rmtree(repos.destination)
    shutil.move(tmp_path / "unmounted", repos.destination)
    repos.backup("budgets.db", "groceries 150\n")
    back = await repos.copier(record=True).copy()
    assert (back.copied, back.skipped) == (1, 1)


async def test_no_password_and_no_repository_reach_the_command_line(
    repos: Repos, tmp_path: Path
) -> None:
    log = tmp_path / "argv.log"
    wrapper = tmp_path / "restic-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {repos.binary} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    repos.backup("budgets.db", "groceries 120\n")

    result = await repos.copier(binary=str(wrapper)).copy()

    assert result.copied == 1
    argv = log.read_text()
    assert "copy" in argv.split()
    for secret in (SOURCE_PASSWORD, DESTINATION_PASSWORD, str(repos.source), "password"):
        assert secret not in argv


async def test_a_wrong_offsite_password_is_a_named_failure_without_the_password(
    repos: Repos,
) -> None:
    repos.backup("budgets.db", "groceries 120\n")
    await repos.copier().copy()
    repos.destination_password.write_text("not-the-password")

    with pytest.raises(OffsiteCopyFailed) as failure:
        await repos.copier().copy()

    assert failure.value.label == "wrong_password"
    assert "not-the-password" not in str(failure.value)
    assert str(repos.destination_password) in str(failure.value)


async def test_the_job_exports_the_last_success_and_counts_failures(repos: Repos) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    metrics = OffsiteMetrics(meters.get_meter("test"), interval_s=3600)
    repos.backup("budgets.db", "groceries 120\n")
    try:
        before = metric_points(reader)
        assert "ers_backup_offsite_last_success_timestamp_seconds" not in before
        assert before["ers_backup_offsite_interval_seconds"] == [({}, 3600)]

        assert await copy_once(repos.copier(), metrics) is True
        after = metric_points(reader)
        [(_, last_success)] = after["ers_backup_offsite_last_success_timestamp_seconds"]
        assert last_success == metrics.last_success
        assert after["ers_backup_offsite_snapshots_copied"] == [({}, 1)]

        repos.destination_password.write_text("not-the-password")
        assert await copy_once(repos.copier(), metrics) is False
        failures = by_reason(metric_points(reader)["ers_backup_offsite_failures"])
        assert failures["wrong_password"] == 1
        assert failures["locked"] == 0
    finally:
        meters.shutdown()


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, object], float]]]:
    data = reader.get_metrics_data()
    found: dict[str, list[tuple[dict[str, object], float]]] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = [
                    (dict(p.attributes or {}), p.value) for p in metric.data.data_points
                ]
    return found


def by_reason(points: list[tuple[dict[str, object], float]]) -> dict[str, float]:
    return {str(attrs["reason"]): value for attrs, value in points}


def data_bytes(repository: Path) -> int:
    return sum(f.stat().st_size for f in (repository / "data").rglob("*") if f.is_file())


def retention(keep_last: int) -> OffsiteRetention:
    """The off-host retention with a prune after every copy."""
    return OffsiteRetention(keep_last, "ers", prune_every_s=0.0, next_prune=0.0)


async def test_the_offsite_repository_keeps_what_retention_keeps_and_prunes_the_rest(
    repos: Repos,
) -> None:
    """copy only adds: without a retention of its own the off-host repository held every
    snapshot ever copied, and grew until its disk was full."""
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    metrics = OffsiteMetrics(meters.get_meter("test"), interval_s=3600)
    copier = repos.copier(record=True)
    keep = retention(2)
    try:
        for _ in range(4):
            repos.backup_component("budgets")
            repos.backup_component("budgets")
            repos.backup_component("profiles")
            await repos.local_retention(2)
            assert await copy_once(copier, metrics, retention=keep) is True
            assert repos.offsite_originals() == repos.local_ids()
        offsite = repos.snapshots(repos.destination, repos.destination_password)
        assert len(offsite) == 4  # two of budgets, two of profiles; 12 were copied
        # 12 snapshots of CHUNK_BYTES of their own went over; the prune kept 4 of them.
        assert data_bytes(repos.destination) < 8 * CHUNK_BYTES
        points = metric_points(reader)
        assert points["ers_backup_offsite_snapshots_forgotten"] == [({}, 8)]
        assert set(by_reason(points["ers_backup_offsite_retention_failures"]).values()) == {0}
        assert set(by_reason(points["ers_backup_offsite_failures"]).values()) == {0}
    finally:
        meters.shutdown()


async def test_an_emptied_local_repository_takes_no_copy_off_the_host(repos: Repos) -> None:
    """The off-host retention reads the off-host list: a local repository that lost its
    snapshots (forgotten by hand, or put back from an old copy) leaves the newest ones of
    each component off the host, the last copies there are."""
    metrics = OffsiteMetrics(MeterProvider().get_meter("test"), interval_s=3600)
    copier = repos.copier(record=True)
    for _ in range(3):
        repos.backup_component("budgets")
    await repos.local_retention(2)
    assert await copy_once(copier, metrics, retention=retention(2)) is True
    kept = repos.offsite_originals()
    assert len(kept) == 2

    restic(repos.source, repos.source_password, repos.cache, "forget", *repos.local_ids())
    assert await copy_once(copier, metrics, retention=retention(2)) is True

    assert repos.local_ids() == set()
    assert repos.offsite_originals() == kept


async def test_no_copy_and_no_forget_from_a_local_repository_that_was_replaced(
    repos: Repos, tmp_path: Path
) -> None:
    """Another repository's newer snapshots at the local path would push the real ones out
    of the off-host retention: the copy checks the local repository is still the one."""
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    metrics = OffsiteMetrics(meters.get_meter("test"), interval_s=3600)
    copier = repos.copier(record=True)
    for _ in range(2):
        repos.backup_component("budgets")
    source = Restic(str(repos.source), repos.source_password, cache_dir=repos.cache)
    identity = await RepositoryIdentity.first_seen(source)
    assert await copy_once(copier, metrics, verify_source=identity.verify) is True
    before = repos.offsite_originals()

    shutil.move(repos.source, tmp_path / "the-real-one")
    restic(repos.source, repos.source_password, repos.cache, "init")
    for _ in range(3):
        repos.backup_component("budgets")
    copied = await copy_once(copier, metrics, verify_source=identity.verify, retention=retention(2))

    assert copied is False
    assert repos.offsite_originals() == before
    failures = by_reason(metric_points(reader)["ers_backup_offsite_failures"])
    assert failures["repository_replaced"] == 1
    meters.shutdown()


async def test_a_failed_offsite_forget_is_counted_apart_from_the_copy_that_succeeded(
    repos: Repos, tmp_path: Path
) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    metrics = OffsiteMetrics(meters.get_meter("test"), interval_s=3600)
    copier = repos.copier(record=True)
    for _ in range(3):
        repos.backup_component("budgets")
    assert await copy_once(copier, metrics) is True
    repos.backup_component("budgets")

    # A live restic process holding a shared lock on the off-host repository (a backup
    # waiting on its input): a copy shares it, a forget and a prune cannot.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env.update(
        RESTIC_REPOSITORY=str(repos.destination),
        RESTIC_PASSWORD_FILE=str(repos.destination_password),
        RESTIC_CACHE_DIR=str(repos.cache),
    )
    holder = subprocess.Popen(
        ["restic", "backup", "--stdin", "--tag", "holder"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):  # bounded: the lock appears once restic has opened the repository
            if any((repos.destination / "locks").iterdir()):
                break
            await asyncio.sleep(0.1)
        assert any((repos.destination / "locks").iterdir())

        assert await copy_once(copier, metrics, retention=retention(2)) is True
    finally:
        # Killed, it leaves its lock behind: stale, as its process is gone from this host.
        holder.kill()
        holder.wait(timeout=RESTIC_TIMEOUT_S)

    points = metric_points(reader)
    assert points["ers_backup_offsite_snapshots_copied"] == [({}, 4)]
    assert metrics.last_success is not None
    assert set(by_reason(points["ers_backup_offsite_failures"]).values()) == {0}
    assert by_reason(points["ers_backup_offsite_retention_failures"])["locked"] == 1
    assert len(repos.offsite_originals()) == 4  # nothing forgotten yet: the next copy will
    # What BackupOffsiteRetentionFailing reads: a failure, and no success after it.
    [(_, failed_at)] = points["ers_backup_offsite_retention_last_failure_timestamp_seconds"]
    assert failed_at > 0
    assert "ers_backup_offsite_retention_last_success_timestamp_seconds" not in points

    assert await copy_once(copier, metrics, retention=retention(2)) is True
    assert len(repos.offsite_originals()) == 2
    points = metric_points(reader)
    [(_, succeeded_at)] = points["ers_backup_offsite_retention_last_success_timestamp_seconds"]
    assert succeeded_at >= failed_at
    meters.shutdown()


async def test_the_service_starts_the_copy_job_with_its_backup_jobs(
    settings: Settings, tmp_path: Path, restic_binary: str
) -> None:
    offsite = tmp_path / "offsite-repo"
    password = tmp_path / "offsite.pw"
    password.write_text(DESTINATION_PASSWORD)
    settings = settings.model_copy(
        update={
            "backups_enabled": True,
            "backup_schedule_enabled": True,
            "offsite_repository": str(offsite),
            "offsite_password_file": password,
        }
    )
    application = create_app(settings)
    metric = "ers_backup_offsite_last_success_timestamp_seconds"
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            text = ""
            for _ in range(240):  # the first copy runs once the repository is reached
                text = (await http.get("/metrics")).text
                if metric in text:
                    break
                await asyncio.sleep(0.5)
    assert metric in text, text[-2000:]
    assert "ers_backup_offsite_interval_seconds" in text
    assert (offsite / "config").is_file()
