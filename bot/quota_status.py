"""A member's quota at one moment: plain data, so that what shows it (`bot.render`) needs
nothing of the policy that computes it (`bot.quotas`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class QuotaSource(StrEnum):
    """Where the applying limit came from (so `/usage` can say why)."""

    OVERRIDE = "override"
    ROLE = "role"
    GUILD_DEFAULT = "guild_default"
    DEFAULT = "default"


@dataclass(frozen=True)
class QuotaStatus:
    """A member's quota at one moment.

    `limit`/`remaining` are None when unlimited. `resets_at` is when the next slot frees
    (the moment `remaining` goes up by one, which for an exhausted quota is when the user
    may generate again); None when nothing will free up (no charged jobs in the window,
    unlimited, or a limit of 0).
    """

    limit: int | None
    used: int
    remaining: int | None
    resets_at: float | None
    source: QuotaSource

    @property
    def unlimited(self) -> bool:
        return self.limit is None

    @property
    def allowed(self) -> bool:
        """May the user queue one more image now?"""
        return self.remaining is None or self.remaining > 0
