"""The workout agent (the seed's WPA): a weekly plan by goal, level and equipment."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from service.agents.base import AgentReply, AgentRequest
from service.stores.base import ProfileBackend
from service.stores.writes import UpdateProfile, profile_with

if TYPE_CHECKING:
    from service.stores import Stores

LEVEL_DAYS = {"beginner": 3, "intermediate": 4, "advanced": 5}
WEEKDAYS = {
    3: ("Monday", "Wednesday", "Friday"),
    4: ("Monday", "Tuesday", "Thursday", "Friday"),
    5: ("Monday", "Tuesday", "Wednesday", "Friday", "Saturday"),
}
GOALS = {
    "strength": re.compile(r"\b(strength|stronger|strong|powerlift)"),
    "muscle": re.compile(r"\b(muscle|hypertroph|bulk|gain|mass|tone)"),
    "endurance": re.compile(r"\b(endurance|cardio|stamina|run|running|marathon)"),
    "weight_loss": re.compile(r"\b(lose|weight loss|fat|slim|cut)"),
}
LEVELS = {
    "beginner": re.compile(r"\b(beginner|new to|never|novice|starting)"),
    "advanced": re.compile(r"\b(advanced|experienced|years of training)"),
    "intermediate": re.compile(r"\b(intermediate|some experience)"),
}
EQUIPMENT = {
    "barbell": re.compile(r"\b(barbell|gym|rack)"),
    "dumbbells": re.compile(r"\b(dumbbells?|kettlebells?)"),
    "bands": re.compile(r"\b(bands?|resistance band)"),
}
GOAL_SCHEME = {
    "strength": "4-5 sets of 3-6 reps, long rests (2-3 min)",
    "muscle": "3-4 sets of 8-12 reps, rests of 60-90 s",
    "endurance": "2-3 sets of 15-20 reps in circuits, short rests",
    "weight_loss": "3 sets of 10-15 reps as a circuit, then 20 min of brisk cardio",
    "general": "3 sets of 8-12 reps, rests of 60-90 s",
}
EXERCISES = {
    "bodyweight": {
        "lower": ["squats", "reverse lunges", "glute bridges"],
        "upper": ["push-ups", "pike push-ups", "inverted rows under a table"],
        "core": ["plank", "dead bug"],
        "cardio": ["brisk walk or jog, 30 min"],
    },
    "bands": {
        "lower": ["banded squats", "banded good mornings", "lateral band walks"],
        "upper": ["band rows", "band chest press", "band pull-aparts"],
        "core": ["pallof press", "plank"],
        "cardio": ["intervals: 6 x 1 min hard, 1 min easy"],
    },
    "dumbbells": {
        "lower": ["goblet squats", "dumbbell Romanian deadlifts", "split squats"],
        "upper": ["dumbbell bench press", "one-arm rows", "overhead press"],
        "core": ["renegade rows", "side plank"],
        "cardio": ["dumbbell complexes, 15 min"],
    },
    "barbell": {
        "lower": ["back squats", "deadlifts", "walking lunges"],
        "upper": ["bench press", "barbell rows", "overhead press", "pull-ups"],
        "core": ["hanging knee raises", "ab wheel"],
        "cardio": ["rower or bike intervals, 20 min"],
    },
}
SPLITS = {
    3: (
        ("full body A", ("lower", "upper", "core")),
        ("full body B", ("upper", "lower", "core")),
        ("full body C", ("lower", "upper", "cardio")),
    ),
    4: (
        ("upper", ("upper", "core")),
        ("lower", ("lower", "core")),
        ("upper", ("upper", "cardio")),
        ("lower", ("lower", "cardio")),
    ),
    5: (
        ("upper", ("upper", "core")),
        ("lower", ("lower", "core")),
        ("conditioning", ("cardio",)),
        ("upper", ("upper", "core")),
        ("lower", ("lower", "cardio")),
    ),
}


def _first_match(patterns: dict[str, re.Pattern[str]], text: str) -> str | None:
    return next((name for name, pattern in patterns.items() if pattern.search(text)), None)


def weekly_plan(goal: str, level: str, equipment: str) -> list[tuple[str, str, list[str]]]:
    days = LEVEL_DAYS[level]
    library = EXERCISES[equipment]
    plan = []
    for day, (focus, parts) in zip(WEEKDAYS[days], SPLITS[days], strict=True):
        moves: list[str] = []
        for part in parts:
            moves.extend(library[part][: 2 if part != "cardio" else 1])
        if goal == "endurance" and "cardio" not in parts:
            moves.append(library["cardio"][0])
        plan.append((day, focus, moves))
    return plan


GENERAL_GUIDANCE = (
    "General guidance while personalised plans are unavailable: aim for 150 minutes of "
    "moderate activity a week and two sessions of full-body strength work (squats, push-ups, "
    "rows, planks), warming up first and resting a day between hard sessions."
)


class WorkoutAgent:
    name = "workout"

    def __init__(self, profiles: ProfileBackend) -> None:
        self._profiles = profiles

    async def handle(self, request: AgentRequest) -> AgentReply:
        text = request.message.lower()
        stored = await self._profiles.get(request.user_id)
        profile = profile_with(stored, request.user_id, request.pending)
        goal = _first_match(GOALS, text) or _goal_from_profile(profile.goal if profile else None)
        level = _first_match(LEVELS, text) or (profile.level if profile else None)
        equipment = _first_match(EQUIPMENT, text)
        if equipment is None and profile and profile.equipment:
            equipment = profile.equipment[0]
        if re.search(r"\b(no equipment|bodyweight|at home|home)\b", text) and equipment is None:
            equipment = "bodyweight"
        updates: dict[str, object] = {"level": level} if level else {}
        if equipment:
            updates["equipment"] = (equipment,)
        writes = (UpdateProfile.of(request.user_id, **updates),) if updates else ()
        level = level or "beginner"
        equipment = equipment or "bodyweight"
        goal = goal or "general"
        lines = [
            f"Your weekly plan ({LEVEL_DAYS[level]} days, {level}, goal: "
            f"{goal.replace('_', ' ')}, equipment: {equipment}). "
            f"Each exercise: {GOAL_SCHEME[goal]}.",
        ]
        plan = weekly_plan(goal, level, equipment)
        for day, focus, moves in plan:
            lines.append(f"- {day} ({focus}): {', '.join(moves)}")
        lines.append("Rest on the other days; add weight or reps when the last set feels easy.")
        # The plan answers a later request too: its writes only keep the level and equipment.
        return AgentReply(
            content="\n".join(lines),
            agent=self.name,
            data={"goal": goal, "level": level, "equipment": equipment, "days": len(plan)},
            writes=writes,
            reusable=True,
        )


def _goal_from_profile(goal: str | None) -> str | None:
    return {"lose": "weight_loss", "gain": "muscle"}.get(goal or "")


def create(name: str, stores: Stores) -> WorkoutAgent:
    """The ``ers.agents`` entry point ``workout``: the built-in agent, named ``name``."""
    agent = WorkoutAgent(stores.profiles)
    agent.name = name
    return agent
