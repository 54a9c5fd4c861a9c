"""The figures a profile takes, stated once for the profile API and for chat alike."""

from __future__ import annotations

AGE_MIN_YEARS = 10  # inclusive
AGE_MAX_YEARS = 110  # inclusive
WEIGHT_ABOVE_KG = 20  # exclusive
WEIGHT_MAX_KG = 400  # inclusive
HEIGHT_ABOVE_CM = 80  # exclusive
HEIGHT_MAX_CM = 260  # inclusive
