from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.config_checks import unknown_variables
from service.settings import Environment, Settings, SettingsError, load_settings

# Settings come from the environment and ./ers.yaml: each test starts from neither.
pytestmark = pytest.mark.usefixtures("without_ers_settings")


def test_defaults_are_the_seeds() -> None:
    settings = load_settings()
    assert settings.env is Environment.DEVELOPMENT
    assert settings.max_backups == 50
    assert settings.circuit_breaker_threshold == 5
    assert settings.health_check_interval_s == 30
    assert settings.emergency_rollback_enabled is True
    assert settings.auto_rollback_enabled is False
    intervals = settings.backup_interval_minutes
    assert (intervals.system_state, intervals.conversations, intervals.profiles) == (15, 30, 30)
    assert (intervals.budgets, intervals.full_system) == (60, 60)
    assert settings.fault_injection is True


def test_yaml_file_then_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "ers.yaml").write_text(
        "max_backups: 100\ncircuit_breaker_threshold: 3\nbackup_interval_minutes:\n  budgets: 30\n"
    )
    monkeypatch.setenv("ERS_CIRCUIT_BREAKER_THRESHOLD", "7")
    settings = load_settings()
    assert settings.max_backups == 100
    assert settings.circuit_breaker_threshold == 7
    assert settings.backup_interval_minutes.budgets == 30
    assert settings.backup_interval_minutes.conversations == 30


def test_explicit_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.yaml"
    config.write_text("env: production\nfault_injection_enabled: false\n")
    monkeypatch.setenv("ERS_CONFIG", str(config))
    settings = load_settings()
    assert settings.env is Environment.PRODUCTION
    assert settings.fault_injection is False


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"ERS_MAX_BACKUPS": "zero"}, "invalid setting 'max_backups'"),
        ({"ERS_CIRCUIT_BREAKER_THRESHOLD": "0"}, "invalid setting 'circuit_breaker_threshold'"),
        ({"ERS_ENV": "staging"}, "invalid setting 'env'"),
        ({"ERS_CONFIG": "/nonexistent/ers.yaml"}, "ERS_CONFIG: no such file"),
        ({"ERS_CONFIG": "/tmp"}, "ERS_CONFIG: /tmp is a directory; point it at the YAML file"),
        (
            {"ERS_INTAKE_TOKEN_FILE": "/nonexistent/token"},
            "invalid setting 'intake_token_file': cannot read /nonexistent/token (",
        ),
        (
            {"ERS_BACKUP_INTERVAL_MINUTES__NOPE": "5"},
            "'backup_interval_minutes.nope': unknown key; check its spelling (in the YAML "
            "file, or ERS_BACKUP_INTERVAL_MINUTES__NOPE)",
        ),
        (
            {"ERS_BACKUP_INTERVAL_MINUTES__BUDGET": "5"},
            "'backup_interval_minutes.budget': unknown key; did you mean "
            "backup_interval_minutes.budgets?",
        ),
    ],
)
def test_invalid_values_name_the_key(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert expected in str(error.value)
    assert "\n" not in str(error.value)
    assert "sk-secret" not in str(error.value)


def test_the_notifications_key_says_who_notifies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ERS had a notifications switch that nothing read: people are notified by
    Alertmanager. A configuration that still sets it is told so, not ignored."""
    (tmp_path / "ers.yaml").write_text("notifications:\n  enabled: true\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value).startswith(
        "invalid setting 'notifications': ERS sends no notifications itself; people are "
        "notified by Alertmanager's `people` receiver"
    )


def test_unknown_yaml_key_is_named_with_the_nearest_key(tmp_path: Path) -> None:
    (tmp_path / "ers.yaml").write_text("max_backup: 3\n")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value) == (
        "invalid setting 'max_backup': unknown key; did you mean max_backups?"
    )


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        (
            "agents:\n"
            "  helper: {kind: http, url: 'http://127.0.0.1:8600/chat'}\n"
            "  helper: {kind: http, url: 'http://127.0.0.1:8601/chat'}\n",
            "agents.helper",
            "lines 2 and 3",
        ),
        ("max_backups: 3\nhealth_check_interval_s: 10\nmax_backups: 4\n", "max_backups", "1 and 3"),
    ],
)
def test_a_key_written_twice_is_named(tmp_path: Path, text: str, key: str, lines: str) -> None:
    (tmp_path / "ers.yaml").write_text(text)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert f"invalid setting '{key}': written twice" in str(error.value)
    assert lines in str(error.value)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "agents:\n  yes: {kind: python, factory: 'my_agents:coach'}\n",
            "invalid setting 'agents': the name yes (line 2 of",
        ),
        ("agent_routes:\n  null: coach\n", "the name null (line 2 of"),
        ("agent_breakers:\n  off: {open_duration_s: 60}\n", "is read by YAML as true or false"),
        ("agents:\n  2024: {kind: python, factory: 'my_agents:coach'}\n", "as a number"),
    ],
)
def test_a_name_yaml_reads_as_no_text_is_named_as_written(
    tmp_path: Path, text: str, said: str
) -> None:
    """It was "invalid setting 'agents.1.[key]': Input should be a valid string", naming
    neither the agent nor the line, for an agent called yes, off or null."""
    (tmp_path / "ers.yaml").write_text(text)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert said in str(error.value)
    assert "write it in quotes" in str(error.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"max_backups: 5\n\xff\n", "not UTF-8 text (byte 0xff at offset 15); save it as UTF-8"),
        (b"1: 2\n", "1 at the top level is not a setting name"),
        (b"true: 2\n", "True at the top level is not a setting name"),
    ],
)
def test_a_config_file_ers_cannot_take_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes, expected: str
) -> None:
    """These came out as a traceback (UnicodeDecodeError, AttributeError) and exit 1."""
    config = tmp_path / "f.yaml"
    config.write_bytes(content)
    monkeypatch.setenv("ERS_CONFIG", str(config))
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value).startswith(f"{config}: ")
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_config_file_that_cannot_be_read_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "f.yaml"
    config.write_text("max_backups: 5\n")
    monkeypatch.setenv("ERS_CONFIG", str(config))
    real_read_text = Path.read_text

    def unreadable(path: Path, *args: object, **kwargs: object) -> str:
        if path == config:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_text(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", unreadable)
    with pytest.raises(SettingsError, match=r"f\.yaml: cannot read it \(Permission denied\); "):
        load_settings()


def test_a_bad_config_file_stops_a_command_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_bytes(b"max_backups: 5\n\xff\n")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "backup", "--offline", "list"],
        env={"ERS_CONFIG": "f.yaml", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "ers: f.yaml: not UTF-8 text (byte 0xff at offset 15); save it as UTF-8"
    ]


def test_anchors_and_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    (tmp_path / "ers.yaml").write_text(
        "agent_breakers:\n"
        "  budget: &slow {open_duration_s: 60}\n"
        "  workout: {<<: *slow, failure_threshold: 3}\n"
    )
    assert load_settings().agent_breakers["workout"] == {
        "open_duration_s": 60,
        "failure_threshold": 3,
    }


@pytest.mark.parametrize("value", ["{bad", "[1, 2", "not json", "sk-secret"])
def test_an_environment_variable_that_is_not_json_names_its_setting(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """It came out as a traceback of pydantic-settings' own SettingsError. The value is not
    repeated: an agent's settings may hold a key."""
    monkeypatch.setenv("ERS_AGENTS", value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith("invalid setting 'agents': ERS_AGENTS is not valid JSON (")
    assert message.endswith("or in the YAML file") and "\n" not in message
    assert value not in message


def test_token_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text("s3cret-token\n")
    monkeypatch.setenv("ERS_ADMIN_TOKEN_FILE", str(token_file))
    settings = load_settings()
    assert settings.token("admin") == "s3cret-token"
    assert "s3cret-token" not in repr(settings)


def test_a_blank_token_is_unset_and_does_not_hide_its_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text("s3cret-token\n")
    (tmp_path / "blank.token").write_text(" \n\t\n")
    monkeypatch.setenv("ERS_ADMIN_TOKEN", "")
    monkeypatch.setenv("ERS_ADMIN_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("ERS_ALERT_TOKEN", "  ")
    monkeypatch.setenv("ERS_INTAKE_TOKEN_FILE", str(tmp_path / "blank.token"))
    settings = load_settings()
    assert settings.token("admin") == "s3cret-token"
    assert settings.token("alert") is None
    assert settings.token("intake") is None


def test_a_token_is_kept_as_a_request_presents_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A header's value arrives without the blanks around it: kept with them, the token
    # refused every request with a 401, the right token included.
    monkeypatch.setenv("ERS_ADMIN_TOKEN", "  s3cret-token\n")
    assert load_settings().token("admin") == "s3cret-token"


@pytest.mark.parametrize("token", ["s3cr\u00e9t", "s3cr\tet", "s3cr\x7fet"])
def test_a_token_no_request_could_present_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, token: str
) -> None:
    monkeypatch.setenv("ERS_ALERT_TOKEN", token)
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith("invalid setting 'alert_token': the token holds the character U+")
    assert "not printable ASCII" in message and token not in message
    monkeypatch.delenv("ERS_ALERT_TOKEN")
    (tmp_path / "intake.token").write_text(token + "\n")
    monkeypatch.setenv("ERS_INTAKE_TOKEN_FILE", str(tmp_path / "intake.token"))
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value).startswith(
        f"invalid setting 'intake_token_file': {tmp_path / 'intake.token'}: the token holds"
    )


def test_a_blank_variable_leaves_the_yaml_files_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Blank is unset for these settings: it does not hide what the YAML file says, as an
    # unset compose variable (ERS_DATABASE_URL=) would otherwise move the state to SQLite.
    (tmp_path / "ers.yaml").write_text(
        "admin_token: from-yaml\n"
        "database_url: postgresql://ers@db.example:5432/ers\n"
        "trace_url_template: http://grafana.example/{trace_id}\n"
    )
    for variable in ("ERS_ADMIN_TOKEN", "ERS_DATABASE_URL", "ERS_TRACE_URL_TEMPLATE"):
        monkeypatch.setenv(variable, " ")
    settings = load_settings()
    assert settings.token("admin") == "from-yaml"
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "postgresql://ers@db.example:5432/ers"
    assert settings.trace_url_template == "http://grafana.example/{trace_id}"


def test_a_token_file_in_the_environment_wins_over_a_token_in_the_yaml_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The environment stands over the YAML file, whichever form each gives the token in.
    (tmp_path / "ers.yaml").write_text(
        f"admin_token: old-from-yaml\nalert_token_file: {tmp_path / 'alert.yaml-file'}\n"
    )
    (tmp_path / "admin.token").write_text("new-from-file\n")
    (tmp_path / "alert.yaml-file").write_text("alert-from-yaml-file\n")
    monkeypatch.setenv("ERS_ADMIN_TOKEN_FILE", str(tmp_path / "admin.token"))
    monkeypatch.setenv("ERS_ALERT_TOKEN", "alert-from-variable")
    settings = load_settings()
    assert settings.token("admin") == "new-from-file"
    assert settings.token("alert") == "alert-from-variable"


def test_a_token_and_its_file_both_in_the_environment_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The variable won without a word: an operator who moved the token to a file (and
    # rotated it there) kept the old one in use.
    (tmp_path / "admin.token").write_text("rotated\n")
    monkeypatch.setenv("ERS_ADMIN_TOKEN", "old-secret")
    monkeypatch.setenv("ERS_ADMIN_TOKEN_FILE", str(tmp_path / "admin.token"))
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value) == (
        "invalid setting 'admin_token': ERS_ADMIN_TOKEN and ERS_ADMIN_TOKEN_FILE are both set;"
        " keep one of them"
    )


def test_a_blank_token_file_variable_beside_the_token_is_refused_as_blank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ERS_ADMIN_TOKEN_FILE= (an unset compose variable) gives no file: "both are set" sent
    # the operator to unset one of two variables of which only one held anything.
    monkeypatch.setenv("ERS_ADMIN_TOKEN", "the-token")
    monkeypatch.setenv("ERS_ADMIN_TOKEN_FILE", " ")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value).startswith("invalid setting 'admin_token_file': empty"), error.value


@pytest.mark.parametrize(
    ("variable", "key", "how"),
    [
        ("ERS_BACKUP_INTERVAL_MINUTES", "backup_interval_minutes", "ERS_BACKUP_INTERVAL_MINUTES__"),
        ("ERS_AGENT_ROUTES", "agent_routes", "ERS_AGENT_ROUTES__NAME=value"),
        ("ERS_AGENT_BREAKERS", "agent_breakers", "ERS_AGENT_BREAKERS__NAME=value"),
    ],
)
def test_one_value_for_a_mapping_says_how_to_write_the_mapping(
    monkeypatch: pytest.MonkeyPatch, variable: str, key: str, how: str
) -> None:
    # Was pydantic's "Input should be a valid dictionary or instance of BackupIntervals".
    monkeypatch.setenv(variable, "5")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith(f"invalid setting '{key}': a mapping of names to values")
    assert how in message and "BackupIntervals" not in message


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("ERS_BACKUP_INTERVAL_MINUTES__BUDGETS", "inf", "backup_interval_minutes.budgets"),
        ("ERS_BACKUP_INTERVAL_MINUTES__BUDGETS", "1e308", "backup_interval_minutes.budgets"),
        ("ERS_EMERGENCY_BACKUP_COOLDOWN_S", "inf", "emergency_backup_cooldown_s"),
        ("ERS_RESPONDER_COOLDOWN_S", "1e308", "responder_cooldown_s"),
        ("ERS_ALERT_ISOLATE_TTL_S", "inf", "alert_isolate_ttl_s"),
        ("ERS_INCIDENT_QUIET_PERIOD_S", "nan", "incident_quiet_period_s"),
        ("ERS_RESTORE_DRILL_INTERVAL_MINUTES", "1e308", "restore_drill_interval_minutes"),
        ("ERS_PRUNE_INTERVAL_HOURS", "inf", "prune_interval_hours"),
        ("ERS_REPOSITORY_CHECK_INTERVAL_HOURS", "9000", "repository_check_interval_hours"),
        ("ERS_OFFSITE_COPY_INTERVAL_MINUTES", "inf", "offsite_copy_interval_minutes"),
        ("ERS_AGENT_BREAKERS", '{"budget": {"open_duration_s": Infinity}}', "agent_breakers"),
    ],
)
def test_numbers_must_be_finite_and_within_reason(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, key: str
) -> None:
    """An infinite interval started the service, whose health endpoint then answered 500 on
    every probe (infinity is not JSON)."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"^invalid setting '{key}[.']"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value", "bound"),
    [
        ("ERS_BACKUP_REFRESH_INTERVAL_S", "0.001", "greater than or equal to 10"),
        ("ERS_OFFSITE_COPY_INTERVAL_MINUTES", "0.01", "greater than or equal to 1"),
    ],
)
def test_a_job_that_runs_restic_each_time_has_a_floor(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, bound: str
) -> None:
    """ERS_BACKUP_REFRESH_INTERVAL_S=0.001 kept restic running without pause (96% CPU)."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=bound):
        load_settings()


def test_a_word_for_a_breakers_number_names_its_key_once(tmp_path: Path) -> None:
    """A value that is neither member of ``float | int`` was named with pydantic's tag for
    the member (agent_breakers.helper.open_duration_s.float) and counted twice."""
    (tmp_path / "ers.yaml").write_text("agent_breakers:\n  helper:\n    open_duration_s: soon\n")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "invalid setting 'agent_breakers.helper.open_duration_s': Input should be a valid "
        "number, unable to parse string as a number (given 'soon')"
    )


def test_an_infinite_interval_in_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ers.yaml").write_text("backup_interval_minutes:\n  budgets: .inf\n")
    with pytest.raises(SettingsError, match="'backup_interval_minutes.budgets': .*finite"):
        load_settings()


@pytest.mark.parametrize(
    "key",
    [
        "host",
        "data_dir",
        "restic_repository",
        "restic_password_file",
        "restic_binary",
        "offsite_repository",
        "offsite_password_file",
        "admin_token_file",
        "alert_token_file",
        "intake_token_file",
        "service_name",
        "classification_rules",
    ],
)
def test_an_empty_path_is_refused(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """ERS_RESTIC_REPOSITORY= (an unset compose variable) made a restic repository in the
    working directory; ERS_DATA_DIR= put the SQLite files there."""
    monkeypatch.setenv(f"ERS_{key.upper()}", " ")
    with pytest.raises(SettingsError, match=f"^invalid setting '{key}': empty; set it"):
        load_settings()


def test_serve_with_a_bad_setting_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        env={"ERS_MAX_BACKUPS": "-1", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ers: invalid setting 'max_backups'")


def test_an_ers_variable_that_names_no_setting_is_told_with_the_nearest_one() -> None:
    environ = {
        "ERS_CIRCUIT_BREAKER_TRESHOLD": "1",  # misspelt
        "ERS_MAX_BACKUPS": "3",
        "ERS_BACKUP_INTERVAL_MINUTES__BUDGETS": "30",
        "ers_max_backups": "3",  # variables are read case-blind
        "ERS_URL": "http://127.0.0.1:8000",  # the CLI's
        "ERS_CONFIG": "ers.yaml",  # the YAML file's path
        "ERS_TEST_DATABASE_URL": "postgresql://127.0.0.1/ers_test",  # the tests' server
        "PATH": "/usr/bin",
    }
    # Before: the typo was ignored without a word and the default applied.
    assert unknown_variables(environ, Settings.model_fields) == [
        "ERS_CIRCUIT_BREAKER_TRESHOLD names no setting and is ignored (did you mean "
        "ERS_CIRCUIT_BREAKER_THRESHOLD?)"
    ]


def test_a_token_file_variable_without_the_token_s_name_is_told() -> None:
    # Nothing reads ERS_TOKEN_FILE (each token's file has its own variable), yet the service
    # started without a word about the variable it ignored.
    [line] = unknown_variables({"ERS_TOKEN_FILE": "/run/secrets/t"}, Settings.model_fields)
    assert line.startswith("ERS_TOKEN_FILE names no setting and is ignored (did you mean ERS_")
    assert line.endswith("_TOKEN_FILE?)")


@pytest.mark.parametrize(
    "variable,value,told",
    [
        (
            "ERS_MAX_BACKUPS",
            "-3",
            "max_backups': Input should be greater than or equal to 1 (given '-3'; allowed: "
            "a whole number from 1 to 10000)",
        ),
        (
            "ERS_PORT",
            "80OO",
            "port': Input should be a valid integer, unable to parse string as an integer "
            "(given '80OO'; allowed: a whole number from 1 to 65535)",
        ),
        (
            "ERS_BACKUP_INTERVAL_MINUTES__BUDGETS",
            "0",
            "backup_interval_minutes.budgets': Input should be greater than 0 (given '0'; "
            "allowed: a number above 0, at most 525600)",
        ),
        (
            "ERS_SHUTDOWN_BACKUP_TIMEOUT_S",
            "7200",
            "shutdown_backup_timeout_s': Input should be less than or equal to 3600 (given "
            "'7200'; allowed: a number above 0, at most 3600)",
        ),
        (
            "ERS_ENV",
            "prod",
            "env': Input should be 'development', 'test' or 'production' (given 'prod')",
        ),
        (
            "ERS_AUTO_ROLLBACK_ENABLED",
            "sometimes",
            "auto_rollback_enabled': Input should be a valid boolean, unable to interpret "
            "input (given 'sometimes'; allowed: true or false)",
        ),
    ],
)
def test_a_refused_value_is_told_as_given_with_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, told: str
) -> None:
    # pydantic names one bound broken and not the value: "greater than or equal to 1" left
    # out the upper bound, and which of several places set the value was not told.
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value) == f"invalid setting '{told}"


def test_a_list_for_a_number_is_told_what_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "ers.yaml").write_text("max_backups: [5]\n")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value) == (
        "invalid setting 'max_backups': Input should be a valid integer (allowed: a whole "
        "number from 1 to 10000)"
    )


def test_a_refused_secret_is_not_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERS_DATABASE_URL", "mysql://ers:hunter2@db/ers")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(
    "yaml_text,key",
    [
        ("data_dir:\n", "data_dir"),
        ("max_backups:\n", "max_backups"),
        ("env:\n", "env"),
        ("agents:\n#  helper: {kind: http, url: 'http://127.0.0.1:8600/chat'}\n", "agents"),
        ("backup_interval_minutes:\n  budgets:\n", "backup_interval_minutes.budgets"),
    ],
)
def test_a_yaml_key_with_no_value_is_refused_as_empty(
    tmp_path: Path, yaml_text: str, key: str
) -> None:
    # Was pydantic's word for the type: "Input is not a valid path for <class
    # 'pathlib.Path'>", "Input should be a valid integer".
    (tmp_path / "ers.yaml").write_text(yaml_text)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value) == (
        f"invalid setting '{key}': empty (null in the YAML file); write a value, or remove the key"
    )


def test_a_yaml_key_with_no_value_leaves_an_optional_setting_unset(tmp_path: Path) -> None:
    (tmp_path / "ers.yaml").write_text(
        "offsite_max_backups:\nclassification_rules:\ndatabase_url:\n"
    )
    settings = load_settings()
    assert settings.offsite_max_backups is None
    assert settings.classification_rules is None
    assert settings.database_url is None


def test_a_restic_password_file_that_is_a_folder_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A missing one is made at the first start; a folder was taken, and the service ran
    degraded, trying its repository again each second for good."""
    monkeypatch.setenv("ERS_RESTIC_PASSWORD_FILE", str(tmp_path))
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value) == (
        f"invalid setting 'restic_password_file': {tmp_path} is a directory; point "
        "ERS_RESTIC_PASSWORD_FILE at the file holding the repository's password (ERS makes "
        "it at the first start if it is missing)"
    )


def test_a_mistake_names_the_variable_that_made_it_and_only_that(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A variable wins over the settings file, where the operator looked in vain; but one
    that only sits beside the setting must not take the blame for the file's mistake."""
    from service.settings_errors import where_set

    said = "invalid setting 'agents.helper.timeout_s': not a number"
    monkeypatch.setenv("ers_agents__helper__timeout_s", "abc")  # any case, as read
    assert where_set(said) == f"{said} (set by $ers_agents__helper__timeout_s)"
    assert where_set(said, ["agents.helper.timeout_s"]) == said  # a command-line option's
    monkeypatch.delenv("ers_agents__helper__timeout_s")
    monkeypatch.setenv("ERS_AGENTS", '{"helper": {"timeout_s": "abc"}}')
    assert where_set(said) == f"{said} (set by $ERS_AGENTS)"
    monkeypatch.setenv("ERS_AGENTS", '{"other": {"kind": "python"}}')  # merged with the file's
    assert where_set(said) == said
    blank = "invalid setting 'database_url': not a URL"
    monkeypatch.setenv("ERS_DATABASE_URL", "")  # blank: unset, the file's value stands
    assert where_set(blank) == blank
    named = "invalid setting 'agents': ERS_AGENTS is not valid JSON"
    assert where_set(named) == named
    longer = "invalid setting 'agents': a mapping; or ERS_AGENTS__NAME=value"
    assert where_set(longer) == f"{longer} (set by $ERS_AGENTS)"  # that is another name
