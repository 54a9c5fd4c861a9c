"""An agent's auth header, read from its ``auth_file``: one line, the whole value, a file
of its own that only its owner may read in production. The value is in no message."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from service.agents.specs import HttpAgentSpec
from service.settings import SettingsError

# An auth file bigger than this holds no header value.
MAX_AUTH_FILE_BYTES = 65_536
# What an auth header's value may hold: visible ASCII, spaces and tabs.
HEADER_VALUE = re.compile(r"[\x21-\x7e]([\t\x20-\x7e]*[\x21-\x7e])?")
# What a header's value given where its file's path belongs looks like: a scheme and a
# token, or a key of a known shape; it is not repeated in a message.
LIKE_A_VALUE = re.compile(r"\S+\s+\S|(sk|ghp|xox[abp])[-_]")


def read_auth_header(
    name: str, spec: HttpAgentSpec, *, private: bool = False
) -> tuple[str, str] | None:
    """The auth header (name, value) from ``spec.auth_file``: its one line, without a
    byte-order mark or the spaces around it; None without a file. With ``private``
    (production), a file that group or others may read is refused, as the restic password
    file is. Raises SettingsError naming the setting and the file, never its text."""
    if spec.auth_file is None:
        return None
    path = Path(spec.auth_file)
    key = f"invalid setting 'agents.{name}.auth_file'"
    try:
        found = path.stat()
        if not stat.S_ISREG(found.st_mode) or found.st_size > MAX_AUTH_FILE_BYTES:
            # A device (/dev/zero) or a log file would be read into memory without end.
            raise SettingsError(
                f"{key}: {path} is not a small regular file; write the whole value of its "
                f"{spec.auth_header} header to a file of its own"
            )
        mode = found.st_mode & 0o777
        if private and mode & 0o077:
            raise SettingsError(f"{key}: {path} has mode {mode:o}; run: chmod 600 {path}")
        value = path.read_text()
    except OSError as exc:
        if _may_be_a_value(str(spec.auth_file)):
            raise SettingsError(
                f"{key}: cannot read the file it names ({exc.strerror}; not shown here, as it "
                f"may be the {spec.auth_header} header's value itself): write the value to a "
                "file of its own and give that file's path"
            ) from None
        where = path if path.is_absolute() else _relative(path)
        raise SettingsError(
            f"{key}: cannot read {where}: {exc.strerror}; write the whole value of its "
            f"{spec.auth_header} header there"
        ) from None
    except UnicodeDecodeError:
        raise SettingsError(f"{key}: {path} is not UTF-8 text") from None
    # One line; a byte-order mark an editor wrote, and spaces around it, are no part of it.
    value = value.removeprefix("\ufeff").removesuffix("\n").removesuffix("\r").strip(" \t")
    if not value or "\n" in value or "\r" in value:
        raise SettingsError(
            f"{key}: {path} must hold one line, the whole value of its {spec.auth_header} "
            "header (e.g. 'Bearer <token>')"
        )
    if not HEADER_VALUE.fullmatch(value):
        # httpx would refuse it on every call, which the guard would take for an agent
        # that cannot be reached.
        raise SettingsError(
            f"{key}: {path} holds characters a header cannot carry; only printable ASCII, "
            "spaces and tabs"
        )
    return spec.auth_header, value


def _relative(path: Path) -> str:
    # Not the settings file's folder: one beside ers.yaml is not found from elsewhere.
    return f"{path} ({path.absolute()}; a relative path is read from the folder ers serve runs in)"


def _may_be_a_value(given: str) -> bool:
    """Whether what ``auth_file`` holds may be a header's value rather than a path, and so is
    not to be shown: a scheme and a token, a key of a known shape, a name longer than a
    file's may be, or 20 characters and more of mixed case and digits (a token; a file's
    name seldom mixes them)."""
    text = given.replace("/", "")
    return (
        bool(LIKE_A_VALUE.match(given))
        or any(len(part) > 255 for part in given.split("/"))
        or (
            len(text) >= 20
            and any(c.isdigit() for c in text)
            and any(c.isupper() for c in text)
            and any(c.islower() for c in text)
        )
    )
