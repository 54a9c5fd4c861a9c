"""Profiles through the API, as an alternative to stating them in chat."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service.agents.profile_limits import AGE_LIMITS, HEIGHT_LIMITS, WEIGHT_LIMITS
from service.chat.idempotency import REPLAY_HEADER
from service.chat.profile_updates import update_profile
from service.errors import UserInputError
from service.web.auth import require_admin
from service.web.deps import Stores
from service.web.json_route import JsonRoute
from service.web.openapi import errors
from service.web.routes.chat import IDEMPOTENCY_KEY_DOC, USER_ID_PATTERN, idempotency_key
from service.web.routes.json_types import AnyNumber, WholeNumber

# A profile is personal data: the same access as the admin endpoints (the admin token;
# without one, loopback clients only, and never in production).
router = APIRouter(
    route_class=JsonRoute,
    prefix="/api/profiles",
    tags=["profiles"],
    dependencies=[Depends(require_admin)],
)

# Named as the API names it everywhere else: a 422 says "userId: ...".
UserId = Path(alias="userId", min_length=1, max_length=128, pattern=USER_ID_PATTERN)


class ProfileUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    age: Annotated[int, Field(**AGE_LIMITS.field_bounds()), WholeNumber] | None = None
    weightKg: Annotated[float, Field(**WEIGHT_LIMITS.field_bounds()), AnyNumber] | None = None
    heightCm: Annotated[float, Field(**HEIGHT_LIMITS.field_bounds()), AnyNumber] | None = None
    sex: Literal["male", "female"] | None = None
    activity: Literal["sedentary", "light", "moderate", "active", "very_active"] | None = None
    goal: Literal["lose", "maintain", "gain"] | None = None
    level: Literal["beginner", "intermediate", "advanced"] | None = None
    equipment: list[Literal["bodyweight", "bands", "dumbbells", "barbell"]] | None = Field(
        None, max_length=4
    )


@router.get("/{userId}", responses=errors(404))
async def get_profile(stores: Stores, user_id: str = UserId) -> dict[str, Any]:
    profile = await stores.profiles.get(user_id)
    if profile is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no profile for user '{user_id}'")
    return profile.as_dict()


@router.put("/{userId}", openapi_extra=IDEMPOTENCY_KEY_DOC)
async def put_profile(
    body: ProfileUpdate, stores: Stores, request: Request, user_id: str = UserId
) -> Any:
    fields = {
        "age": body.age,
        "weight_kg": body.weightKg,
        "height_cm": body.heightCm,
        "sex": body.sex,
        "activity": body.activity,
        "goal": body.goal,
        "level": body.level,
        "equipment": tuple(body.equipment) if body.equipment is not None else None,
    }
    # A field sent as null is emptied: a wrong goal or level could be replaced, not unset.
    names = dict(zip(ProfileUpdate.model_fields, fields, strict=True))
    cleared = tuple(names[n] for n in sorted(body.model_fields_set) if getattr(body, n) is None)
    try:
        key = idempotency_key(request)
        reply = await update_profile(stores.units, user_id, fields, key, cleared)
    except UserInputError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    if reply.replayed:
        headers = {REPLAY_HEADER: "true"}
        return JSONResponse(reply.body, status_code=reply.status, headers=headers)
    return reply.body
