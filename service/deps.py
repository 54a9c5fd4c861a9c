"""Annotated dependencies: a route's signature says what it needs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from service.chat import ChatService
from service.runtime import Runtime
from service.settings import Settings as SettingsModel
from service.stores import Stores as StoresModel
from service.team import Team as TeamModel


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings(request: Request) -> SettingsModel:
    return request.app.state.settings


async def get_chat(runtime: RuntimeDep) -> ChatService:
    return runtime.chat


async def get_team(runtime: RuntimeDep) -> TeamModel:
    return runtime.team


async def get_stores(runtime: RuntimeDep) -> StoresModel:
    return runtime.stores


Settings = Annotated[SettingsModel, Depends(get_settings)]
Chat = Annotated[ChatService, Depends(get_chat)]
Team = Annotated[TeamModel, Depends(get_team)]
Stores = Annotated[StoresModel, Depends(get_stores)]
