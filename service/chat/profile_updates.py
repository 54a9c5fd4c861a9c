"""A profile update through the API: committed with its Idempotency-Key record, or not at all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.chat.idempotency import check_same_request, fingerprint
from service.stores.unit_of_work import (
    Applied,
    KeyTaken,
    KeyToRemember,
    RememberedReply,
    Unit,
    UnitOfWork,
)
from service.stores.writes import UpdateProfile

SCOPE = "PUT /api/profiles"


@dataclass(frozen=True, slots=True)
class ProfileReply:
    body: dict[str, Any]
    status: int = 200
    replayed: bool = False

    @classmethod
    def replay(cls, remembered: RememberedReply, replayed: bool = True) -> ProfileReply:
        return cls(remembered.body, remembered.status, replayed)


def _body(applied: Applied) -> dict[str, Any]:
    assert applied.profile is not None
    return applied.profile.as_dict()


async def update_profile(
    units: UnitOfWork,
    user_id: str,
    fields: dict[str, Any],
    key: str | None,
    cleared: tuple[str, ...] = (),
) -> ProfileReply:
    """Set the given fields (None: unchanged), empty those ``cleared``, and reply with the
    whole profile; with ``key``, a request already answered gets its first reply again and
    writes nothing."""
    request = ""
    if key is not None:
        asked = {"userId": user_id, "fields": fields} | ({"cleared": cleared} if cleared else {})
        request = fingerprint(SCOPE, asked)
        remembered = await units.remembered(SCOPE, key)
        if remembered is not None:
            check_same_request(remembered, request)
            return ProfileReply.replay(remembered)
    unit = Unit(
        writes=(UpdateProfile.of(user_id, cleared, **fields),),
        read_profile=user_id,
        key=KeyToRemember(SCOPE, key, request, 200, _body) if key is not None else None,
    )
    try:
        applied = await units.commit(unit)
    except KeyTaken as taken:
        remembered = await units.remembered(SCOPE, key or "")
        if remembered is None:
            raise
        check_same_request(remembered, request)
        return ProfileReply.replay(remembered, replayed=not taken.ours)
    return ProfileReply(_body(applied))
