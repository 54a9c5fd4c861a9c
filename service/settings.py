"""ERS settings: one object from a YAML file plus ``ERS_*`` environment variables.

Precedence, highest first: constructor arguments, environment variables, the YAML file
(``ERS_CONFIG``, default ``./ers.yaml`` when it exists), then the defaults stated here.
The defaults are the seed's: backups every 15 min to 1 h per component, 50 backups kept,
breakers trip after 5 failures, health checked every 30 s, emergency rollback on,
automatic rollback off.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import pydantic_settings
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from service.config_checks import (
    EnvironmentSource,
    InvalidSetting,
    SettingsError,
    blank_to_none,
    check_database_url,
    check_open_durations,
    check_trace_link,
    config_path,
    read_token_file,
    refuse_blank,
    refuse_boolean_number,
)
from service.settings_errors import describe_validation_error

COMPONENTS = ("conversations", "budgets", "profiles", "system_state")
# The team by default: the built-in agents, each loaded by its ``ers.agents`` entry point.
BUILT_IN_AGENTS = ("nutrition", "workout", "budget")


def default_agents() -> dict[str, dict[str, Any]]:
    return {name: {"kind": "python", "factory": name} for name in BUILT_IN_AGENTS}


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


# Bounds a person would accept: no job waits longer than a year, no cooldown longer than a
# day (the other seconds settings' bound).
YEAR_MINUTES = 365 * 24 * 60
DAY_S = 86_400


class BackupIntervals(BaseModel):
    """Minutes between scheduled backups of each component (the seed's schedule)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    system_state: float = Field(15, gt=0, le=YEAR_MINUTES)
    conversations: float = Field(30, gt=0, le=YEAR_MINUTES)
    profiles: float = Field(30, gt=0, le=YEAR_MINUTES)
    budgets: float = Field(60, gt=0, le=YEAR_MINUTES)
    full_system: float = Field(60, gt=0, le=YEAR_MINUTES)

    @field_validator("*", mode="before")
    @classmethod
    def _as_written(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[str(info.field_name)].annotation
        refuse_blank(value, annotation)
        return refuse_boolean_number(value, annotation)


# Settings a blank value leaves unset: no request could present a blank token, and blank
# is how a template writes "no database" or "no trace link". Any other blank is refused.
BLANK_MEANS_UNSET = frozenset(
    ("admin_token", "alert_token", "intake_token", "database_url", "trace_url_template")
)


# The off-host copy's settings besides its repository: each means something only with it.
OFFSITE_SETTINGS = frozenset(
    ("offsite_password_file", "offsite_copy_interval_minutes", "offsite_max_backups")
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ERS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        # An infinite interval passed every range check and then broke every JSON reply
        # that shows it (the health endpoint answered 500).
        allow_inf_nan=False,
        # A rejected value may be a database URL with its password: never echo inputs.
        hide_input_in_errors=True,
    )

    env: Environment = Environment.DEVELOPMENT
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Path("var/data")
    # State on a PostgreSQL server (postgresql://user:password@host:port/database) instead
    # of one SQLite file per component in data_dir. Unset: SQLite. The URL may carry a
    # password, so it is a secret: shown only through ``server_location``.
    database_url: SecretStr | None = None

    # restic: a local repository under var/ by default; any restic backend string works.
    restic_repository: str = "var/restic-repo"
    restic_password_file: Path = Path("var/restic-password")
    restic_binary: str = "restic"
    # Off-host copy: a second restic repository `restic copy` fills every
    # offsite_copy_interval_minutes, opened with its own password file. Unset: no copy.
    offsite_repository: str | None = None
    offsite_password_file: Path | None = None
    # Each copy runs restic: at least a minute apart.
    offsite_copy_interval_minutes: float = Field(360, ge=1, le=YEAR_MINUTES)
    # Snapshots of each component the off-host repository keeps; unset: max_backups.
    offsite_max_backups: int | None = Field(None, ge=1, le=10_000)

    # Access tokens: from the variable itself or from a file named by ``*_FILE``.
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    alert_token: SecretStr | None = None
    alert_token_file: Path | None = None
    intake_token: SecretStr | None = None
    intake_token_file: Path | None = None

    # The seed's knobs.
    backup_interval_minutes: BackupIntervals = Field(default_factory=BackupIntervals)
    backups_enabled: bool = True
    backup_schedule_enabled: bool = True
    restore_drill_interval_minutes: float = Field(360, gt=0, le=YEAR_MINUTES)
    prune_interval_hours: float = Field(24, gt=0, le=YEAR_MINUTES / 60)
    repository_check_interval_hours: float = Field(24, gt=0, le=YEAR_MINUTES / 60)
    # How often the snapshot list is re-read from the repository, for snapshots that
    # `ers backup --offline` or another replica made or forgot. Each refresh runs restic:
    # at least 10 s apart, or restic would run without pause.
    backup_refresh_interval_s: float = Field(300, ge=10, le=86_400)
    emergency_backup_cooldown_s: float = Field(300, ge=0, le=DAY_S)
    shutdown_backup_timeout_s: float = Field(30, gt=0, le=3600)
    max_backups: int = Field(50, ge=1, le=10_000)
    circuit_breaker_threshold: int = Field(5, ge=1, le=1000)
    health_check_interval_s: float = Field(30.0, gt=0, le=3600)
    # A health check's incident is resolved once the check has been healthy this long.
    health_incident_resolve_after_s: float = Field(120.0, ge=0, le=86_400)
    # Seconds the system must stay clean before recovery counts as over.
    recovery_clean_s: float = Field(300.0, ge=0, le=86_400)
    emergency_rollback_enabled: bool = True
    auto_rollback_enabled: bool = False

    # Breakers: defaults for every agent, then per-agent overrides of any BreakerConfig field
    # (e.g. ``agent_breakers: {budget: {open_duration_s: 60}}``).
    breaker_open_duration_s: float = Field(30.0, gt=0, le=86_400)
    breaker_max_open_duration_s: float = Field(300.0, gt=0, le=86_400)
    breaker_failure_rate_threshold: float = Field(0.5, gt=0, le=1)
    breaker_slow_call_s: float = Field(5.0, gt=0, le=3600)
    agent_breakers: dict[str, dict[str, float | int]] = Field(default_factory=dict)
    # With the state on PostgreSQL, how often each replica re-reads the fleet's breaker
    # overrides, as the fallback to LISTEN/NOTIFY and after a reconnect.
    fleet_poll_interval_s: float = Field(2.0, gt=0, le=300)

    # Chat.
    max_message_chars: int = Field(4000, ge=1, le=100_000)
    # Chats that start per turn of the event loop while others wait (up to twice that in the
    # turn the line empties), so status, health and alert requests are not queued behind a
    # chat flood (0: no limit); a chat that would wait behind chat_queue_limit others is
    # answered 503 at once.
    chat_starts_per_turn: int = Field(2, ge=0, le=1000)
    chat_queue_limit: int = Field(1000, ge=0, le=1_000_000)
    agent_timeout_s: float = Field(5.0, gt=0, le=300)
    # The team: each agent by name, as ``service/agents/specs.py`` describes one (a Python
    # factory, or a remote agent over HTTP), checked and loaded by ``service.agents.config``
    # at start-up. Listing ``agents`` replaces the default team: keep the built-in ones that
    # should stay. ``agent_routes`` maps one of the router's intents to the agent answering it
    # (null: none, the router answers itself); an intent it leaves out goes to the agent of
    # the same name when the team has one.
    # Each agent's value is checked there, so that a mistake is told in the agents' words.
    agents: dict[str, Any] = Field(default_factory=default_agents)
    agent_routes: dict[str, str | None] = Field(default_factory=dict)
    # Replies to /chat and PUT /api/profiles requests that carried an Idempotency-Key are
    # remembered this long, the newest idempotency_keys_max of them (README: "What a reply
    # promises, and retrying safely").
    idempotency_key_ttl_s: float = Field(86_400.0, gt=0, le=30 * 86_400)
    idempotency_keys_max: int = Field(100_000, ge=1, le=10_000_000)

    # Telemetry.
    service_name: str = "ers"
    # A link to a trace in Grafana/Tempo, e.g.
    # "http://localhost:3000/explore?left=...{trace_id}..." (``{trace_id}`` is filled in).
    trace_url_template: str | None = None
    classification_rules: Path | None = None
    incident_quiet_period_s: float = Field(300.0, ge=0, le=DAY_S)
    alert_isolate_ttl_s: float = Field(900.0, gt=0, le=DAY_S)
    responder_cooldown_s: float = Field(300.0, ge=0, le=DAY_S)
    # Off: incidents are still classified and recorded, but no protocol action runs.
    auto_response_enabled: bool = True
    telemetry_enabled: bool = True

    fault_injection_enabled: bool | None = None
    # Largest request body accepted; larger ones get 413.
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environment = EnvironmentSource(env_settings, BLANK_MEANS_UNSET)
        sources: list[PydanticBaseSettingsSource] = [init_settings, environment]
        yaml_file = config_path()
        if yaml_file is not None:
            sources.append(
                YamlConfigSettingsSource(
                    settings_cls, yaml_file=yaml_file, yaml_file_encoding="utf-8"
                )
            )
        return tuple(sources)

    @field_validator("*", mode="before")
    @classmethod
    def _as_written(cls, value: Any, info: ValidationInfo) -> Any:
        name = str(info.field_name)
        annotation = cls.model_fields[name].annotation
        if name not in BLANK_MEANS_UNSET:
            refuse_blank(value, annotation)
        return refuse_boolean_number(value, annotation)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        check_database_url(value.get_secret_value())
        return value

    @field_validator("trace_url_template")
    @classmethod
    def _trace_link(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        check_trace_link(value)
        return value

    @model_validator(mode="after")
    def _offsite_settings_go_together(self) -> Settings:
        if self.offsite_repository and self.offsite_password_file is None:
            raise InvalidSetting(
                "offsite_password_file",
                "offsite_repository is set without offsite_password_file: point "
                "ERS_OFFSITE_PASSWORD_FILE at the file holding that repository's password",
            )
        if self.offsite_repository and self.offsite_password_file is not None:
            # ERS makes the local repository's password, never the off-host one's (it must
            # be kept off the host too): without it every copy failed, from the first.
            try:
                self.offsite_password_file.open("rb").close()
            except OSError as exc:
                raise InvalidSetting(
                    "offsite_password_file",
                    f"cannot read {self.offsite_password_file} ({exc.strerror}); point "
                    "ERS_OFFSITE_PASSWORD_FILE at the file holding the off-host repository's "
                    "password",
                ) from None
        # Without the repository no copy is made: a setting of the copy given alone (the
        # repository's line forgotten, or misspelt) did nothing, and nothing said so.
        # Its default said again (settings dumped and loaded back) is no mistake.
        fields = type(self).model_fields
        orphans = {n for n in OFFSITE_SETTINGS if getattr(self, n) not in (None, fields[n].default)}
        if not self.offsite_repository and orphans:
            name = min(orphans)
            raise InvalidSetting(
                name,
                f"{name} is set without offsite_repository, so no off-host copy is made and "
                "it does nothing; set offsite_repository (ERS_OFFSITE_REPOSITORY) too, or "
                f"remove {name}",
            )
        return self

    _open_durations_fit = model_validator(mode="after")(check_open_durations)

    @field_validator("restic_password_file")
    @classmethod
    def _password_file_not_a_folder(cls, path: Path) -> Path:
        # A missing one is made at the first start; a folder ran the service degraded, its
        # repository retried each second for good.
        if path.is_dir():
            raise ValueError(
                f"{path} is a directory; point ERS_RESTIC_PASSWORD_FILE at the file holding "
                "the repository's password (ERS makes it at the first start if it is missing)"
            )
        return path

    _blank_token_is_none = field_validator("admin_token", "alert_token", "intake_token")(
        blank_to_none
    )

    @model_validator(mode="after")
    def _read_token_files(self) -> Settings:
        for name in ("admin", "alert", "intake"):
            path: Path | None = getattr(self, f"{name}_token_file")
            if path is not None and getattr(self, f"{name}_token") is None:
                token = read_token_file(f"{name}_token_file", path)
                object.__setattr__(self, f"{name}_token", token)
        return self

    @property
    def fault_injection(self) -> bool:
        """Fault injection defaults to on outside production and is never on in production."""
        if self.fault_injection_enabled is None:
            return self.env is not Environment.PRODUCTION
        return self.fault_injection_enabled

    def token(self, name: str) -> str | None:
        secret: SecretStr | None = getattr(self, f"{name}_token")
        return secret.get_secret_value() if secret is not None else None


def load_settings(**overrides: Any) -> Settings:
    """Build the settings or raise SettingsError with one line naming the bad key."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc, Settings)) from None
    except pydantic_settings.SettingsError as exc:  # a list or mapping variable, not JSON
        # Its value is not repeated: settings such as the agents' may hold credentials.
        name = (re.findall(r'field "([^"]+)"', str(exc)) or ["settings"])[0]
        raise SettingsError(
            f"invalid setting '{name}': ERS_{name.upper()} is not valid JSON ({exc.__cause__}); "
            f'write it as JSON (ERS_AGENT_ROUTES=\'{{"workout": "helper"}}\') or in the '
            "YAML file"
        ) from None
