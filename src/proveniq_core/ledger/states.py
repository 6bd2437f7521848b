"""The asset state machine. The database holds the same table and refuses the rest."""

from __future__ import annotations

from typing import Literal, get_args

AssetStatus = Literal[
    "pending",
    "pending_link",
    "link_failed",
    "linked",
    "verified",
    "rejected",
    "manual_review",
    "compensated",
]

STATUSES: tuple[str, ...] = get_args(AssetStatus)

TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        ("pending", "linked"),
        ("pending", "pending_link"),
        ("pending", "link_failed"),
        ("pending", "compensated"),
        ("pending_link", "linked"),
        ("pending_link", "link_failed"),
        ("pending_link", "compensated"),
        ("link_failed", "pending_link"),
        ("link_failed", "linked"),
        ("link_failed", "compensated"),
        ("linked", "verified"),
        ("linked", "rejected"),
        ("linked", "manual_review"),
        ("linked", "pending"),  # compensation of update_status
        ("manual_review", "verified"),
        ("manual_review", "rejected"),
    }
)

TERMINAL: frozenset[str] = frozenset({"verified", "rejected", "compensated"})


def can_transition(before: str, after: str) -> bool:
    return before == after or (before, after) in TRANSITIONS
