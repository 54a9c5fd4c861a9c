"""restic's failures, produced by the real binary, arrive as named exceptions."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup import BackupManager, RepositoryConfig, RepositoryMissing, init_repository
from backup.errors import (
    PasswordFileUnreadable,
    RepositoryLocked,
    RepositoryNotAFolder,
    RepositoryNotFound,
    RepositoryNotReached,
    ResticError,
    ResticNotInstalled,
    WrongPassword,
)
from backup.identity import RepositoryRecord
from backup.repository import open_identified, restic_for
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def start_lock_holder(config: RepositoryConfig) -> subprocess.Popen[bytes]:
    """A restic backup that reads stdin holds its (shared) lock until stdin closes."""
    env = {
        **os.environ,
        "RESTIC_REPOSITORY": config.repository,
        "RESTIC_PASSWORD_FILE": str(config.password_file),
        "RESTIC_CACHE_DIR": str(config.cache_dir),
    }
    holder = subprocess.Popen(
        ["restic", "backup", "--stdin", "--stdin-filename", "holder.txt"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    locks = Path(config.repository) / "locks"
    deadline = time.monotonic() + 20
    while not any(locks.iterdir()):
        assert time.monotonic() < deadline, "restic did not take its lock"
        time.sleep(0.05)
    return holder


@pytest.fixture
def lock_holder(
    manager: BackupManager, repository_config: RepositoryConfig
) -> Iterator[subprocess.Popen[bytes]]:
    holder = start_lock_holder(repository_config)
    try:
        yield holder
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


async def test_wrong_password_is_named_and_keeps_the_password_secret(
    repository_config: RepositoryConfig, tmp_path: Path
) -> None:
    restic = restic_for(repository_config)
    assert await restic.repository_id() is not None
    secret = "not-the-right-password-123"
    Path(repository_config.password_file).write_text(secret + "\n")
    with pytest.raises(WrongPassword) as failure:
        await restic.snapshots()
    assert secret not in str(failure.value)
    assert "password" in str(failure.value)


async def test_a_missing_password_file_is_named_and_not_made_anew(
    repository_config: RepositoryConfig,
) -> None:
    """Before: a new random password was written in its place, and restic's "wrong password"
    was all that was said, then and on every later try."""
    password_file = Path(repository_config.password_file)
    password_file.unlink()
    for _ in range(2):
        with pytest.raises(PasswordFileUnreadable) as failure:
            await restic_for(repository_config).snapshots()
        assert str(failure.value).startswith(
            f"the restic password file '{password_file}' does not exist: put it back"
        )
    assert not password_file.exists()


async def test_an_init_over_a_repository_whose_password_file_is_gone_makes_none(
    repository_config: RepositoryConfig,
) -> None:
    password_file = Path(repository_config.password_file)
    password_file.unlink()
    with pytest.raises(PasswordFileUnreadable, match="does not exist: put it back"):
        await init_repository(repository_config)
    assert not password_file.exists()


async def test_a_missing_password_file_does_not_hide_a_missing_repository(tmp_path: Path) -> None:
    config = RepositoryConfig(str(tmp_path / "nowhere"), tmp_path / "password")
    with pytest.raises(RepositoryMissing, match="no restic repository at .* run `ers backup init`"):
        await open_identified(config)
    assert not config.password_file.exists()
    created = await init_repository(config)
    assert created.created and config.password_file.exists()


@pytest.mark.parametrize("password", [False, True])
async def test_a_repository_path_that_is_a_file_is_named_so(tmp_path: Path, password: bool) -> None:
    # Before: a first start (no password file yet, ERS makes it) blamed the password file,
    # and with one restic's own words ("ReadDir: open .../keys: not a directory") were told.
    (tmp_path / "repository").write_text("not a repository\n")
    if password:
        (tmp_path / "password").write_text("a password\n")
    config = RepositoryConfig(str(tmp_path / "repository"), tmp_path / "password")
    with pytest.raises(RepositoryNotAFolder) as raised:
        await open_identified(config, may_create=True)
    assert str(raised.value) == (
        f"the restic repository '{tmp_path / 'repository'}' is a file, not a repository's "
        "folder: point the repository setting at a folder (ERS makes the repository there)"
    )
    assert (tmp_path / "password").exists() is password


async def test_a_repository_whose_keys_folder_is_a_file_is_not_called_a_file(
    repository_config: RepositoryConfig,
) -> None:
    # Before: a damaged repository was told to be a file, and the advice was to point the
    # setting at another folder, leaving its snapshots behind.
    keys = Path(repository_config.repository) / "keys"
    for key in keys.iterdir():
        key.unlink()
    keys.rmdir()
    keys.write_text("not a folder\n")
    with pytest.raises(ResticError) as raised:
        await open_identified(repository_config)
    assert not isinstance(raised.value, RepositoryNotAFolder)
    assert "is a file" not in str(raised.value)


async def test_a_password_file_that_cannot_be_read_is_named(
    repository_config: RepositoryConfig,
) -> None:
    password_file = Path(repository_config.password_file)
    password_file.unlink()
    password_file.mkdir()
    with pytest.raises(PasswordFileUnreadable, match="cannot be read \\(Is a directory\\)"):
        await restic_for(repository_config).snapshots()


async def test_missing_repository_is_named(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("a password\n")
    restic = restic_for(RepositoryConfig(str(tmp_path / "nowhere"), tmp_path / "password"))
    with pytest.raises(RepositoryNotFound, match="no restic repository"):
        await restic.snapshots()


async def test_a_server_that_does_not_answer_is_unreachable_not_gone_and_keeps_its_password(
    tmp_path: Path,
) -> None:
    """Before: restic's "Is there a repository at the following location?", which it also
    says of a server that refused the connection, made a recorded repository "gone" (a
    critical incident that offered `ers backup init`), and the message, the status and the
    log carried the address with its password."""
    (tmp_path / "password").write_text("a password\n")
    record = tmp_path / "restic-repository.json"
    RepositoryRecord.now("5c4da2830000").write(record)
    address = f"rest:http://ers:s3cret-in-url@127.0.0.1:{free_port()}/ers"
    config = RepositoryConfig(address, tmp_path / "password", record_file=record)
    with pytest.raises(RepositoryNotReached) as failure:
        await open_identified(config, may_create=True)
    message = str(failure.value)
    assert "cannot be reached (connection refused)" in message
    assert "s3cret-in-url" not in message and "rest:http://***@127.0.0.1:" in message


async def test_an_unreached_repository_is_not_blamed_on_a_missing_password_file(
    tmp_path: Path,
) -> None:
    """A first start has no password file yet: one whose repository cannot be reached was
    told "the restic password file does not exist: put it back", a file there never was."""
    address = f"rest:http://127.0.0.1:{free_port()}/ers"
    config = RepositoryConfig(address, tmp_path / "password")
    with pytest.raises(RepositoryNotReached, match="cannot be reached"):
        await open_identified(config)
    assert not config.password_file.exists()


async def test_missing_binary_is_named(repository_config: RepositoryConfig, tmp_path: Path) -> None:
    config = RepositoryConfig(
        repository_config.repository,
        repository_config.password_file,
        binary=str(tmp_path / "bin" / "restic"),
    )
    with pytest.raises(ResticNotInstalled, match="install restic") as failure:
        await restic_for(config).version()
    # The setting that names the binary, so the fix is clear without reading the code.
    assert "restic_binary (ERS_RESTIC_BINARY)" in str(failure.value)


async def test_live_lock_is_reported_with_its_holder(
    manager: BackupManager, lock_holder: subprocess.Popen[bytes]
) -> None:
    with pytest.raises(RepositoryLocked) as failure:
        await manager.prune()  # takes the repository exclusively
    assert failure.value.holder is not None
    assert failure.value.holder.pid == lock_holder.pid
    assert f"PID {lock_holder.pid}" in str(failure.value)
    assert lock_holder.poll() is None  # a live holder is never unlocked


async def test_stale_lock_of_a_dead_process_is_removed_and_the_call_retried(
    manager: BackupManager, lock_holder: subprocess.Popen[bytes], state_files: dict[str, Path]
) -> None:
    await manager.create(None, "manual")
    lock_holder.kill()  # SIGKILL: restic cannot remove its lock
    lock_holder.wait()
    assert any((Path(manager.restic.repository) / "locks").iterdir())
    result = await manager.forget(keep_last=5)
    assert len(result.kept) == 1
    assert (await manager.check()).ok
    assert not any((Path(manager.restic.repository) / "locks").iterdir())


class _EchoingServer(http.server.BaseHTTPRequestHandler):
    """A server in front of a repository that fails every request and quotes its headers,
    Authorization and all, as a misconfigured proxy does."""

    def _answer(self) -> None:
        body = json.dumps({"error": "upstream failed", "request": dict(self.headers)}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echoing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_token_given_as_the_repositorys_user_stays_out_of_a_failure(
    tmp_path: Path, echoing_server: str
) -> None:
    """Before: restic 0.14 hides only a URL's password, and its 'create repository at
    rest:http://tok-...@127.0.0.1:.../ failed' went into the message as it was."""
    (tmp_path / "password").write_text("a password\n")
    address = echoing_server.replace("http://", "rest:http://tok-91e2c4d7a0@") + "/ers"
    restic = restic_for(RepositoryConfig(address, tmp_path / "password"))
    with pytest.raises(ResticError) as failure:
        await restic.init()
    assert "tok-91e2c4d7a0" not in str(failure.value)
    assert "rest:http://***@127.0.0.1:" in str(failure.value)


async def test_a_backend_key_a_server_echoes_stays_out_of_a_failure(
    tmp_path: Path, echoing_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: restic quotes an S3 server's error reply, and a proxy that echoes the request
    put the access key id of its Authorization header into the message."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAECHOED7Q2W9E")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-access-key-5b7d0e")
    (tmp_path / "password").write_text("a password\n")
    restic = restic_for(RepositoryConfig(f"s3:{echoing_server}/bucket", tmp_path / "password"))
    with pytest.raises(ResticError) as failure:
        await restic.init()
    assert "Credential=***/" in str(failure.value)  # the reply is quoted, the key id not
    assert "AKIAECHOED7Q2W9E" not in str(failure.value)
