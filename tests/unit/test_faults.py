"""Fault rules, control messages and the FaultBook's command arithmetic (no I/O)."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proveniq_core.api.sim import control_app
from proveniq_core.locker.faults import (
    ClearFaults,
    FaultBook,
    FaultRule,
    FaultRuleError,
    parse_control,
    parse_rule,
)


def rule(**fields: Any) -> FaultRule:
    return parse_rule({"lockerRef": "locker-001", "fault": "drop", **fields})


def hits(book: FaultBook, ref: str, n: int) -> list[int]:
    """Indexes of the next ``n`` commands to ``ref`` that some rule hits."""
    return [i for i in range(n) if book.decide(ref) is not None]


def test_design_example_parses_and_echoes() -> None:
    """The lab's example (the third link is late) is a valid rule, echoed with id and counter."""
    example = {
        "lockerRef": "locker-003",
        "fault": "delay",
        "delayMs": 35000,
        "count": 1,
        "after": 2,
        "command": "link",
    }
    entry = FaultBook().add(parse_rule(example))
    assert entry.view() == {**example, "id": entry.id, "seen": 0}
    assert json.loads(json.dumps(entry.view()))["delayMs"] == 35000


@pytest.mark.parametrize(
    ("fields", "field", "needle"),
    [
        ({"fault": "delay"}, "delayMs", "required for fault 'delay'"),
        ({"fault": "offline"}, "seconds", "required for fault 'offline'"),
        ({"fault": "flaky"}, "probability", "required for fault 'flaky'"),
        ({"fault": "flaky", "probability": 1.5}, "probability", "less than or equal to 1"),
        ({"fault": "flaky", "probability": -0.1}, "probability", "greater than or equal to 0"),
        ({"fault": "delay", "delayMs": -1}, "delayMs", "greater than or equal to 0"),
        ({"fault": "offline", "seconds": 0}, "seconds", "greater than 0"),
        ({"fault": "drop", "delayMs": 5}, "delayMs", "only applies to fault 'delay'"),
        ({"fault": "delay", "delayMs": 5, "seconds": 1}, "seconds", "only applies to fault"),
        ({"fault": "drop", "count": -1}, "count", "greater than or equal to 0"),
        ({"fault": "drop", "after": -2}, "after", "greater than or equal to 0"),
        ({"fault": "drop", "count": 1.5}, "count", "valid integer"),
        ({"fault": "drop", "count": "2"}, "count", "valid integer"),
        ({"fault": "drop", "after": True}, "after", "valid integer"),
        ({"fault": "melt"}, "fault", "'hardware_fault', 'flaky' or 'bad_evidence'"),
        ({"fault": "drop", "lockerRef": "a/b"}, "lockerRef", "'*' or a locker ref"),
        ({"fault": "drop", "lockerRef": "#"}, "lockerRef", "'*' or a locker ref"),
        ({"fault": "drop", "lockers": "x"}, "lockers", "unknown field"),
        ({"fault": "drop", "command": "reboot"}, "command", "'collect_evidence' or 'ping'"),
        ({"fault": "drop", "command": 1}, "command", "'link', 'unlink'"),
        (
            {"fault": "bad_evidence", "defect": "stale", "command": "link"},
            "command",
            "only applies to command 'collect_evidence'",
        ),
        ({"lockerRef": None}, "fault", "Field required"),
    ],
)
def test_invalid_rules_are_rejected_with_the_field(
    fields: dict[str, Any], field: str, needle: str
) -> None:
    """Each invalid rule names the offending field and says what is wrong with it."""
    with pytest.raises(FaultRuleError) as caught:
        parse_rule({"lockerRef": "locker-001", **fields})
    problems = {p["field"]: p["problem"] for p in caught.value.problems}
    assert field in problems
    assert needle in problems[field]
    assert f"{field}: " in str(caught.value)


@pytest.mark.parametrize(
    "payload", [b"{nope", b"\xff\xfe", b"[1, 2]", b'"drop"', b"", {"clear": False}]
)
def test_invalid_control_messages_are_rejected(payload: Any) -> None:
    """Non-JSON, non-objects and a clear that is not true are control errors, not crashes."""
    with pytest.raises(FaultRuleError):
        parse_control(payload)


def test_control_messages_are_rules_or_clears() -> None:
    """A control message is a rule, or {"clear": true} with an optional lockerRef."""
    assert parse_control(b'{"clear": true}') == ClearFaults(clear=True)
    assert parse_control('{"clear": true, "lockerRef": "*"}') == ClearFaults(
        clear=True, lockerRef="*"
    )
    assert parse_control(b'{"lockerRef": "*", "fault": "offline", "seconds": 2}') == FaultRule(
        lockerRef="*", fault="offline", seconds=2
    )
    with pytest.raises(FaultRuleError, match="lockerRef"):
        parse_control({"clear": True, "lockerRef": "no/slash"})
    with pytest.raises(FaultRuleError, match="fault: unknown field"):
        parse_control({"clear": True, "fault": "drop"})


@given(
    after=st.integers(0, 30),
    count=st.none() | st.integers(0, 30),
    n=st.integers(0, 80),
)
def test_after_skips_then_count_limits(after: int, count: int | None, n: int) -> None:
    """A rule hits exactly the matching commands numbered after … after+count-1 (from 0)."""
    book = FaultBook()
    book.add(rule(after=after, count=count))
    end = n if count is None else min(n, after + count)
    assert hits(book, "locker-001", n) == list(range(after, end))


@given(
    after=st.integers(0, 10),
    count=st.integers(1, 10),
    refs=st.lists(st.sampled_from(["locker-001", "locker-002", "locker-003"]), max_size=60),
)
def test_each_rule_counts_only_the_commands_it_targets(
    after: int, count: int, refs: list[str]
) -> None:
    """A locker's rule counts that locker's commands; a "*" rule counts every command."""
    book = FaultBook()
    one = book.add(rule(after=after, count=count))
    everyone = book.add(rule(lockerRef="*", fault="hardware_fault", after=after, count=count))
    seen_one = 0
    for seen_all, ref in enumerate(refs):
        hit = book.decide(ref)
        expected = None
        if after <= seen_all < after + count:
            expected = everyone.id  # added last: decides when both apply
        elif ref == "locker-001" and after <= seen_one < after + count:
            expected = one.id
        assert (hit.id if hit else None) == expected
        seen_one += ref == "locker-001"


def test_the_rule_added_last_decides_and_all_keep_counting() -> None:
    """When two rules apply, the later one wins, and the earlier one still uses up its count."""
    book = FaultBook()
    delay = book.add(rule(fault="delay", delayMs=100, count=2))
    fault = book.add(rule(fault="hardware_fault", count=1))
    first = book.decide("locker-001")
    second = book.decide("locker-001")
    assert first is not None and first.id == fault.id
    assert second is not None and second.id == delay.id
    assert book.decide("locker-001") is None
    assert book.list() == []


def test_bad_evidence_counts_only_evidence_collections() -> None:
    """A bad_evidence rule lets links through uncounted and spoils the next collection."""
    book = FaultBook()
    spoil = book.add(rule(fault="bad_evidence", defect="stale", count=1))
    assert book.decide("locker-001", "link") is None
    assert book.decide("locker-001", "ping") is None
    hit = book.decide("locker-001", "collect_evidence")
    assert hit is not None and hit.id == spoil.id and hit.rule.defect == "stale"
    assert book.decide("locker-001", "collect_evidence") is None
    with pytest.raises(FaultRuleError, match="defect"):
        rule(fault="bad_evidence")
    with pytest.raises(FaultRuleError, match="defect"):
        rule(fault="bad_evidence", defect="smudged")
    with pytest.raises(FaultRuleError, match="defect"):
        rule(fault="drop", defect="stale")


def test_a_command_rule_counts_only_that_command() -> None:
    """after 2 with command link is the third link, however many other commands come between."""
    book = FaultBook()
    late = book.add(rule(fault="delay", delayMs=35000, count=1, after=2, command="link"))
    sequence = ["link", "collect_evidence", "ping", "link", "collect_evidence", "unlink"]
    assert [book.decide("locker-001", c) for c in sequence] == [None] * len(sequence)
    assert book.list()[0].seen == 2
    hit = book.decide("locker-001", "link")
    assert hit is not None and hit.id == late.id
    assert book.list() == []
    assert book.decide("locker-001", "link") is None


def test_a_rule_without_command_counts_every_command() -> None:
    """Without command, after 2 is the third command of any type."""
    book = FaultBook()
    book.add(rule(after=2, count=1))
    decided = [book.decide("locker-001", c) for c in ["collect_evidence", "ping", "link"]]
    assert [d is not None for d in decided] == [False, False, True]


def test_exhausted_rules_leave_the_book() -> None:
    """A rule whose count is used up is no longer listed; count 0 is never stored."""
    book = FaultBook()
    assert book.add(rule(count=0)).exhausted
    assert book.list() == []
    entry = book.add(rule(count=2, after=1))
    assert [e.id for e in book.list()] == [entry.id]
    assert hits(book, "locker-001", 2) == [1]
    assert book.list()[0].seen == 2
    assert hits(book, "locker-001", 1) == [0]
    assert book.list() == []
    assert book.add(rule()).id != entry.id


def test_a_rule_for_another_locker_does_not_count() -> None:
    """Commands to other lockers neither hit a rule nor advance its after/count."""
    book = FaultBook()
    book.add(rule(after=1, count=1))
    assert hits(book, "locker-002", 5) == []
    assert hits(book, "locker-001", 3) == [1]


def test_flaky_is_deterministic_for_a_seed() -> None:
    """flaky drops with its probability; two books with the same seed drop the same commands."""
    books = [FaultBook(random.Random(7)) for _ in range(3)]
    books.append(FaultBook.seeded(7))
    books.append(FaultBook.seeded(7))
    for book in books:
        book.add(rule(fault="flaky", probability=0.3))
    runs = [hits(book, "locker-001", 2000) for book in books]
    assert runs[0] == runs[1] == runs[2]
    assert runs[3] == runs[4]
    assert 0.25 < len(runs[0]) / 2000 < 0.35


@pytest.mark.parametrize(("probability", "expected"), [(1, 50), (0, 0)])
def test_flaky_extremes(probability: float, expected: int) -> None:
    """probability 1 drops every command, 0 none, and the rule stays until cleared."""
    book = FaultBook(random.Random(1))
    book.add(rule(fault="flaky", probability=probability))
    assert len(hits(book, "locker-001", 50)) == expected
    assert len(book) == 1


def test_clear_by_locker_is_exact() -> None:
    """clear(ref) removes that locker's rules only, clear("*") the fleet-wide ones, clear() all."""
    book = FaultBook()
    book.add(rule())
    book.add(rule(lockerRef="locker-002"))
    book.add(rule(lockerRef="*"))
    assert book.clear("locker-001") == 1
    assert {e.rule.lockerRef for e in book.list()} == {"locker-002", "*"}
    assert book.apply(ClearFaults(clear=True, lockerRef="*")) == 1
    assert book.clear("nobody") == 0
    assert book.apply(ClearFaults(clear=True)) == 1
    assert book.list() == []


async def test_control_app_serves_the_book_without_auth() -> None:
    """The loopback control app adds, lists and clears rules, and refuses bad ones as 422."""
    book = FaultBook()
    transport = httpx.ASGITransport(app=control_app(book))
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as http:
        created = await http.post(
            "/sim/faults", json={"lockerRef": "locker-003", "fault": "offline", "seconds": 30}
        )
        assert created.status_code == 201
        body = created.json()
        assert body == {
            "id": body["id"],
            "lockerRef": "locker-003",
            "fault": "offline",
            "seconds": 30,
            "after": 0,
            "seen": 0,
        }
        assert [e.id for e in book.list()] == [body["id"]]

        bad = await http.post("/sim/faults", json={"lockerRef": "*", "fault": "delay"})
        assert bad.status_code == 422
        error = bad.json()["error"]
        assert error["code"] == "E_VALIDATION"
        assert "delayMs" in error["message"]
        assert error["details"][0]["field"] == "delayMs"

        listed = await http.get("/sim/faults")
        assert listed.json() == {"items": [body]}
        assert (await http.delete("/sim/faults", params={"lockerRef": "x/y"})).status_code == 422
        cleared = await http.delete("/sim/faults", params={"lockerRef": "locker-003"})
        assert cleared.json() == {"cleared": 1}
        assert (await http.get("/sim/faults")).json() == {"items": []}
