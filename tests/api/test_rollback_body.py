"""A rollback's body as the route and the CLI read it: a component named twice is one."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.cli.main import build_parser
from service.web.routes.backups import Rollback
from service.web.routes.backups import TestRollback as Drill


def test_a_component_named_twice_is_rolled_back_and_recorded_once() -> None:
    body = Rollback.model_validate(
        {
            "backupId": "a1b2c3d4",
            "confirm": True,
            "reason": "  bad import  ",
            "components": ["budgets", "profiles", "budgets"],
        }
    )
    assert body.components == ["budgets", "profiles"]
    assert body.reason == "bad import"
    drill = Drill.model_validate({"backupId": "a1b2c3d4", "components": ["budgets"] * 2})
    assert drill.components == ["budgets"]


def test_no_components_at_all_is_refused_and_none_means_every_one() -> None:
    with pytest.raises(ValidationError, match="at least 1 item"):
        Drill.model_validate({"backupId": "a1b2c3d4", "components": []})
    assert Drill.model_validate({"backupId": "a1b2c3d4"}).components is None


def test_the_cli_names_each_component_once() -> None:
    parser = build_parser()
    rollback = parser.parse_args(
        ["backup", "rollback", "a1b2c3d4", "--components", "budgets", "profiles", "budgets"]
        + ["--reason", "bad import", "--yes"]
    )
    assert rollback.components == ["budgets", "profiles"]
    drill = parser.parse_args(["backup", "test-rollback", "a1b2c3d4", "--components", "budgets"])
    assert drill.components == ["budgets"]


def test_the_incidents_named_to_roll_back_are_refused_with_the_reason() -> None:
    """Before: "Input should be 'conversations', 'budgets', 'profiles' or 'system_state'",
    which leaves the operator to guess why the incidents, which are backed up, are not."""
    body = {"backupId": "a1b2c3d4", "confirm": True, "reason": "r", "components": ["incidents"]}
    with pytest.raises(ValidationError, match="the incidents are never rolled back"):
        Rollback.model_validate(body)
    with pytest.raises(ValidationError, match="the incidents are never rolled back"):
        Drill.model_validate({"backupId": "a1b2c3d4", "components": ["budgets", "incidents"]})
