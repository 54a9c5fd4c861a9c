"""The figures a profile takes, stated once for the profile API and for chat alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    """A figure's allowed values: from ``low`` to ``high`` in ``unit``; ``low`` itself only
    when ``low_included``."""

    low: float
    high: float
    unit: str
    low_included: bool = True

    def field_bounds(self) -> dict[str, Any]:
        """The same limits as pydantic ``Field`` constraints."""
        return {"ge" if self.low_included else "gt": self.low, "le": self.high}


AGE_LIMITS = Limits(10, 110, "years")
WEIGHT_LIMITS = Limits(20, 400, "kg", low_included=False)
HEIGHT_LIMITS = Limits(80, 260, "cm", low_included=False)
