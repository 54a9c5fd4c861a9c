"""Everything the lifespan builds, in one place the dependencies reach."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from service.chat import ChatService
from service.faults import FaultInjector
from service.settings import Settings
from service.stores import Stores
from service.team import Team
from telemetry.providers import Telemetry


@dataclass
class Runtime:
    settings: Settings
    telemetry: Telemetry
    stores: Stores
    team: Team
    chat: ChatService
    faults: FaultInjector | None
    started_at: float = field(default_factory=time.time)
    ready: bool = False
    not_ready_reason: str | None = "starting"
