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
        if _like_a_value(str(spec.auth_file)):
            raise SettingsError(
                f"{key}: cannot read it ({exc.strerror}), and what it holds looks like the "
                f"{spec.auth_header} header's value itself (not shown here): write the value to "
                "a file of its own and give that file's path"
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


def _like_a_value(given: str) -> bool:
    """Whether what ``auth_file`` holds looks like a header's value rather than a path: a
    scheme and a token, a key of a known shape, or a long run of letters and digits with no
    '/' or '.' (a bare key), or longer than a file's name may be (a token)."""
    bare = "/" not in given and "." not in given and len(given) >= 20
    return (
        bool(LIKE_A_VALUE.match(given))
        or len(given) > 255
        or (bare and any(c.isdigit() for c in given) and any(c.isalpha() for c in given))
    )
