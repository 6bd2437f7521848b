"""Pure logic: the asset state machine table and the audit chain hash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from proveniq_core.ledger.audit import GENESIS, canonical, chain_hash
from proveniq_core.ledger.states import STATUSES, TERMINAL, TRANSITIONS, can_transition


def test_terminal_states_have_no_way_out() -> None:
    """verified, rejected and compensated are final."""
    assert not [t for t in TRANSITIONS if t[0] in TERMINAL]


def test_every_state_is_reachable_from_pending() -> None:
    """Every status can be reached from pending through legal transitions."""
    seen, frontier = {"pending"}, ["pending"]
    while frontier:
        s = frontier.pop()
        for a, b in TRANSITIONS:
            if a == s and b not in seen:
                seen.add(b)
                frontier.append(b)
    assert seen == set(STATUSES)


def test_a_linked_asset_cannot_be_relinked_or_skip_verification_back() -> None:
    """Spot checks: no verified → linked, no pending → verified, same-state is a no-op."""
    assert not can_transition("verified", "linked")
    assert not can_transition("pending", "verified")
    assert can_transition("linked", "linked")
    assert can_transition("linked", "verified")


def _row(**over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": 1,
        "seq": 1,
        "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "tenant_id": "t",
        "actor": "key:abc",
        "action": "asset.created",
        "entity_type": "asset",
        "entity_id": "e",
        "before": None,
        "after": {"status": "pending", "n": 1},
        "request_id": "r",
        "saga_id": None,
    }
    row.update(over)
    return row


def test_canonical_form_ignores_key_order_and_time_zone() -> None:
    """The same content hashes the same whatever the dict order or session time zone."""
    a = _row(after={"b": 1, "a": 2})
    b = _row(
        after={"a": 2, "b": 1},
        at=datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
    )
    assert canonical(a) == canonical(b)
    assert chain_hash(GENESIS, a) == chain_hash(GENESIS, b)


@given(
    st.sampled_from(["actor", "action", "entity_id", "request_id", "tenant_id"]),
    st.text(max_size=20),
)
def test_any_change_of_content_changes_the_hash(field: str, value: str) -> None:
    """Changing any covered field changes the row's chain hash."""
    base = _row()
    changed = _row(**{field: value})
    if base[field] != value:
        assert chain_hash(GENESIS, base) != chain_hash(GENESIS, changed)


def test_hash_depends_on_the_previous_link() -> None:
    """The same row after a different predecessor gets a different hash."""
    assert chain_hash(GENESIS, _row()) != chain_hash("f" * 64, _row())
