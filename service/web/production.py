"""Production's rules, checked before anything starts: what a production service may not
run without, or with."""

from __future__ import annotations

import os
from pathlib import Path

from service.config_checks import (
    SettingsError,
    check_private_file,
    token_needed,
    unknown_variables,
)
from service.settings import Environment, Settings


def check_production(settings: Settings) -> None:
    """Production refuses to start without its tokens, with a password or token file that
    others can read, with telemetry off or fault injection on, or beside an ERS_ variable
    that names no setting."""
    if settings.env is not Environment.PRODUCTION:
        return
    # Every missing token at once: one start to learn them all, not one per token.
    if missing := [n for n in ("admin", "alert", "intake") if settings.token(n) is None]:
        needed = "; and ".join(token_needed(settings, name) for name in missing)
        them = "them" if len(missing) > 1 else "it"
        raise SettingsError(f"production needs {needed}; set {them} before starting")
    if not settings.telemetry_enabled:
        raise SettingsError(
            "invalid setting 'telemetry_enabled': without spans no failing call becomes an "
            "incident and nothing responds to one, and /metrics has no request, chat or agent "
            "figures for the alert rules; it is for measuring telemetry's cost, not for "
            "production: unset it"
        )
    if settings.fault_injection_enabled:
        raise SettingsError(
            "invalid setting 'fault_injection_enabled': fault injection is never allowed in "
            "production; unset it"
        )
    check_private_file(
        "restic password file",
        settings.restic_password_file,
        f"production needs the restic password file {settings.restic_password_file}; "
        "create it with mode 0600",
    )
    if settings.offsite_password_file is not None:
        gone = f"production needs the off-host password file {settings.offsite_password_file}"
        check_private_file("off-host password file", settings.offsite_password_file, gone)
    # The alert token is left out: Alertmanager, another user, reads the same file (see
    # deploy/secrets/README.md).
    for name in ("admin", "intake"):
        path: Path | None = getattr(settings, f"{name}_token_file")
        if path is not None:
            check_private_file(
                f"{name} token file", path, f"invalid setting '{name}_token_file': {path} is gone"
            )
    # Elsewhere a log line says so; a production replica started with ERS_DATABSE_URL would
    # run on SQLite files of its own, beside the fleet's database.
    if unknown := unknown_variables(os.environ, Settings.model_fields):
        raise SettingsError(
            f"{'; '.join(unknown)}: production does not start beside such a variable; "
            "correct or unset it"
        )
