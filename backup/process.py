"""Running one external program: no shell, stdin closed, a timeout, JSON lines read as they come."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup.errors import ResticNotInstalled, ResticTimeout, shown_repository
from backup.models import Progress

# restic removes its own lock when interrupted; a kill is the last resort.
INTERRUPT_GRACE_SECONDS = 5.0

ProgressCallback = Callable[[Progress], None]
# What starting a program raises when it is missing or not executable where it was looked for.
CANNOT_START = (FileNotFoundError, PermissionError, NotADirectoryError)


# ERS's own settings (tokens, the database URL) are for ERS alone: no program it starts needs
# them, and any of them could read them from /proc/<pid>/environ.
SERVICE_PREFIX = "ERS_"

# A program ERS starts stops with ERS, after a kill -9 too: `setpriv --pdeathsig` (util-linux)
# has the kernel signal it when the thread that started it ends, here the event loop's thread,
# which ends with the process. SIGINT, as `stop_process` sends: psql leaves its transaction
# uncommitted, pg_dump and pg_restore stop, and restic stops too, though its word on stopping
# goes to a pipe nobody reads any more, which kills it before it removes its repository lock:
# that lock is stale (locks.py), and the next restic command ERS runs removes it. Without
# setpriv (not Linux), programs run as before and outlive a killed ERS.
SETPRIV = shutil.which("setpriv")


def inherited_environment(*dropped_prefixes: str) -> dict[str, str]:
    """The service's environment for a program it starts, without ERS_* and without variables
    starting with any of `dropped_prefixes`. The rest stays: PATH, HOME, TMPDIR, proxies and a
    backend's or libpq's own variables (AWS_*, B2_*, PGSSLMODE...) are the program's to use."""
    dropped = (SERVICE_PREFIX, *dropped_prefixes)
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)}


# Variables whose values are credentials (AWS_SECRET_ACCESS_KEY, AWS_ACCESS_KEY_ID,
# B2_ACCOUNT_KEY, AZURE_ACCOUNT_SAS, GOOGLE_ACCESS_TOKEN, OS_PASSWORD...); a *_FILE variable
# names a file, which a message may name. A backend's keys are long and random: shorter
# values are left, as they could take a word out of what restic's failures are told by.
_CREDENTIAL_VARIABLE = re.compile(r"PASS|SECRET|KEY|TOKEN|CREDENTIAL|SAS", re.IGNORECASE)
# Named so but public: the official Python images set GPG_KEY (PHP's, GPG_KEYS), the
# fingerprint of the key their releases are signed with, and a public key or a fingerprint
# is published to be read. None whose name also says secret (GPG_PRIVATE_KEY stays out),
# and only a value shaped as what the name promises: CI setups put the whole private key,
# or its passphrase, in a GPG_KEY as well.
_PUBLIC_VARIABLE = re.compile(
    r"(?!.*(?:PASS|SECRET|TOKEN|PRIVATE|CREDENTIAL))"
    r"(?:GPG_KEYS?|(?:\w*_)?(?:PUBLIC_KEY|FINGERPRINT)S?)",
    re.IGNORECASE,
)
# A key id or a fingerprint (gpg prints one in groups of four), or an OpenSSH or armoured
# public key.
_KEY_ID = re.compile(r"(?:0x)?(?:[0-9A-F]{16}|[0-9A-F]{40})", re.IGNORECASE)
_PUBLIC_KEY = re.compile(
    r"-----BEGIN (?:PGP )?PUBLIC KEY(?: BLOCK)?-----.*"
    r"|(?:sk-)?(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp\d+)(?:@openssh\.com)?"
    r" [A-Za-z0-9+/]+={0,2}(?: .*)?",
    re.DOTALL,
)
_SHORTEST_CREDENTIAL = 8


def without_credentials(text: str, env: Mapping[str, str]) -> str:
    """What a program wrote, fit for a message, a log line or an incident: the values of
    `env`'s credential variables and the user information of any URL left out. A program
    quotes what its server answered (a proxy's 401 echoing the request's Authorization, an
    AWS access key id and all) and names its repository as it likes: restic 0.14 shows the
    user of `rest:https://user:pass@host/`, and a token given as the user, in full."""
    found = [
        value
        for name, value in env.items()
        if _CREDENTIAL_VARIABLE.search(name)
        and not (_PUBLIC_VARIABLE.fullmatch(name) and _is_public(value))
        and not name.endswith("_FILE")
        and len(value) >= _SHORTEST_CREDENTIAL
    ]
    for value in sorted(found, key=len, reverse=True):
        text = text.replace(value, "***")
    return shown_repository(text)


def _is_public(value: str) -> bool:
    """Whether ``value`` is fingerprints or key ids, or a public key, and holds no private
    key."""
    if "PRIVATE" in value.upper():
        return False
    words = value.split()
    if words and all(len(word) == 4 for word in words):
        words = ["".join(words)]
    if words and all(_KEY_ID.fullmatch(word) for word in words):
        return True
    return _PUBLIC_KEY.fullmatch(value.strip()) is not None


@dataclass
class CommandOutput:
    exit_code: int
    stdout: str
    stderr: str
    messages: list[dict[str, Any]] = field(default_factory=list)  # JSON lines but status


async def run_program(
    binary: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    cwd: Path | None = None,
    on_progress: ProgressCallback | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    detached: bool = False,
) -> CommandOutput:
    """Run `binary args`; the exit code is returned, not judged.

    `stdin` and `stdout` are file descriptors the program reads from or writes to instead of
    nothing and a captured pipe (the caller keeps them and closes them); output written to a
    given `stdout` is not collected. A `detached` program runs in a session of its own: a
    Ctrl-C at the terminal reaches ERS, which decides whether to stop it, and not it.
    """
    try:
        process = await start_program(
            binary, args, env=env, cwd=cwd, stdin=stdin, stdout=stdout, detached=detached
        )
    except CANNOT_START as exc:
        raise ResticNotInstalled(
            f"restic could not be started from '{binary}' ({exc.strerror}): install restic "
            "(apt install restic) or point restic_binary (ERS_RESTIC_BINARY) at its binary"
        ) from None
    collected = CommandOutput(exit_code=-1, stdout="", stderr="")
    try:
        async with asyncio.timeout(timeout):
            await _collect(process, collected, on_progress)
    except TimeoutError:
        await stop_process(process)
        raise ResticTimeout(
            f"restic {args[0]} did not finish within {timeout:g} s and was stopped: check that "
            "the repository is reachable and answers (a server that takes connections and never "
            "answers, a network that drops them)"
        ) from None
    except BaseException:
        await stop_process(process)
        raise
    collected.exit_code = process.returncode if process.returncode is not None else -1
    collected.stderr = without_credentials(collected.stderr, env)
    return collected


async def start_program(
    binary: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    pass_fds: Sequence[int] = (),
    detached: bool = False,
) -> asyncio.subprocess.Process:
    """Start `binary args` without a shell: it reads `stdin` (else nothing), writes to `stdout`
    (else a pipe), and its stderr is piped; it gets SIGINT if ERS ends first (see SETPRIV).
    It inherits `pass_fds` as they are numbered here. Raises one of CANNOT_START when it
    cannot start."""
    return await asyncio.create_subprocess_exec(
        *_stopping_with_parent(binary, env),
        *args,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
        stdout=asyncio.subprocess.PIPE if stdout is None else stdout,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=dict(env),
        pass_fds=tuple(pass_fds),
        # A session of its own (uvloop, under `ers serve`, has no process_group).
        start_new_session=detached,
    )


def _stopping_with_parent(binary: str, env: Mapping[str, str]) -> list[str]:
    """`binary` behind setpriv, found as the program would be (on `env`'s PATH). A binary
    that cannot be found or run is started directly, so that it fails as it would alone."""
    found = shutil.which(binary, path=os.pathsep.join(os.get_exec_path(dict(env))))
    if SETPRIV is None or found is None:
        return [binary]
    return [SETPRIV, "--pdeathsig", "INT", "--", found]


async def _collect(
    process: asyncio.subprocess.Process,
    collected: CommandOutput,
    on_progress: ProgressCallback | None,
) -> None:
    assert process.stderr is not None
    stderr_task = asyncio.ensure_future(process.stderr.read())
    lines: list[str] = []
    try:
        if process.stdout is not None:  # None when the output goes to the caller's fd
            async for raw in process.stdout:
                line = raw.decode(errors="replace")
                lines.append(line)
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        message = json.loads(line)
                        if isinstance(message, dict):
                            _dispatch(message, collected, on_progress)
        collected.stderr = (await stderr_task).decode(errors="replace")
    finally:
        stderr_task.cancel()
    collected.stdout = "".join(lines)
    await process.wait()


def _dispatch(
    message: dict[str, Any], collected: CommandOutput, on_progress: ProgressCallback | None
) -> None:
    if message.get("message_type") != "status":
        collected.messages.append(message)
        return
    if on_progress is not None:
        on_progress(Progress(percent_done=float(message.get("percent_done", 0.0))))


async def stop_process(
    process: asyncio.subprocess.Process,
    sig: int = signal.SIGINT,
    grace_s: float = INTERRUPT_GRACE_SECONDS,
) -> None:
    """Send ``sig`` (restic releases its repository lock on SIGINT), then kill the process
    if it has not exited within ``grace_s``."""
    _signal(process, sig)
    try:
        async with asyncio.timeout(grace_s):
            await process.wait()
    except TimeoutError:
        _signal(process, signal.SIGKILL)
        await process.wait()


def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
    """``os.kill``, not ``process.send_signal``: that one first polls the child (as
    subprocess.Popen does), and a poll that finds it just exited takes its exit status from
    the event loop's child watcher, which then reports 255 for it and logs "Unknown child
    process pid" on stderr, under the CLI's own message."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
