"""How one agent's calls are run: its timeout, retries with backoff, and time budget."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from service.errors import DependencyError


@dataclass(frozen=True)
class GuardConfig:
    """How one agent's calls are run. Defaults suit deterministic in-process agents."""

    timeout_s: float = 5.0
    # Attempts per call including the first; 1 disables retries.
    max_attempts: int = 3
    backoff_initial_s: float = 0.05
    backoff_multiplier: float = 2.0
    backoff_max_s: float = 1.0
    # Wall time a call may take across all its attempts and backoffs.
    total_budget_s: float = 8.0
    retry_on: tuple[type[BaseException], ...] = field(
        default=(TimeoutError, DependencyError, ConnectionError)
    )

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.total_budget_s <= 0:
            raise ValueError("timeout_s and total_budget_s must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_initial_s < 0 or self.backoff_multiplier < 1:
            raise ValueError("backoff_initial_s must be >= 0 and backoff_multiplier >= 1")

    def backoff(self, attempt: int) -> float:
        """Full-jitter backoff before retry number ``attempt`` (1-based)."""
        ceiling = min(
            self.backoff_max_s, self.backoff_initial_s * self.backoff_multiplier ** (attempt - 1)
        )
        return random.uniform(0, ceiling)

    def limit(self, left_s: float) -> tuple[float, float | None]:
        """An attempt's time limit with ``left_s`` of the budget left, and the budget when
        that, not ``timeout_s``, sets it (a timeout then says so)."""
        if left_s < self.timeout_s:
            return left_s, self.total_budget_s
        return self.timeout_s, None
