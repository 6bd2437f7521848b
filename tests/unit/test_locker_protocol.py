"""Locker protocol v1 messages, topics and latency profiles."""

from __future__ import annotations

import json
import random
import statistics
from datetime import UTC, datetime

import pytest

from proveniq_core.locker.protocol import (
    Command,
    Reply,
    ReplyError,
    commands_topic,
    decode_command,
    decode_reply,
    encode,
    ref_from_topic,
    replies_topic,
    status_topic,
    validate_ref,
)
from proveniq_core.locker.simulator import LatencyProfile, fleet_specs

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_command_round_trip() -> None:
    """A command survives encode/decode unchanged and carries v=1 on the wire."""
    command = Command(commandId="c-1", type="link", assetId="a-1", issuedAt=NOW)
    wire = encode(command)
    assert json.loads(wire)["v"] == 1
    assert decode_command(wire) == command


def test_reply_round_trip_ok_and_error() -> None:
    """Both reply shapes survive encode/decode, and absent fields stay off the wire."""
    ok = Reply(commandId="c-1", ok=True, result={"lockerId": "LKR-1"})
    failed = Reply(commandId="c-2", ok=False, error=ReplyError(code="busy", detail="door open"))
    assert decode_reply(encode(ok)) == ok
    assert decode_reply(encode(failed)) == failed
    assert "error" not in json.loads(encode(ok))
    assert "result" not in json.loads(encode(failed))


@pytest.mark.parametrize(
    "payload",
    [
        {"v": 1, "commandId": "c", "ok": True},
        {"v": 1, "commandId": "c", "ok": False},
        {"v": 1, "commandId": "c", "ok": False, "result": {}, "error": {"code": "busy"}},
        {"v": 1, "commandId": "c", "ok": True, "result": {}, "error": {"code": "busy"}},
        {"v": 1, "commandId": "c", "ok": False, "error": {"code": "on_fire"}},
        {"v": 2, "commandId": "c", "ok": True, "result": {}},
        {"v": 1, "commandId": "c", "ok": True, "result": {}, "extra": 1},
    ],
)
def test_invalid_replies_are_rejected(payload: dict[str, object]) -> None:
    """A reply whose ok flag contradicts its payload, or with unknown fields, is a ValueError."""
    with pytest.raises(ValueError, match="malformed Reply"):
        decode_reply(json.dumps(payload).encode())


@pytest.mark.parametrize(
    "change",
    [
        {"type": "explode"},
        {"extra": True},
        {"issuedAt": "2025-01-02T03:04:05"},  # no timezone
        {"commandId": ""},
    ],
)
def test_invalid_commands_are_rejected(change: dict[str, object]) -> None:
    """Unknown types, extra fields, naive timestamps and empty ids are ValueErrors."""
    payload = {"v": 1, "commandId": "c", "type": "ping", "issuedAt": NOW.isoformat()} | change
    with pytest.raises(ValueError, match="malformed Command"):
        decode_command(json.dumps(payload).encode())


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b"\xff\xfe"])
def test_garbage_bytes_are_value_errors(data: bytes) -> None:
    """Non-JSON or non-object payloads raise ValueError, never anything else."""
    with pytest.raises(ValueError, match="malformed"):
        decode_command(data)
    with pytest.raises(ValueError, match="malformed"):
        decode_reply(data)


def test_topics_and_ref_round_trip() -> None:
    """Each topic names the ref, and the ref can be read back from it."""
    assert commands_topic("locker-001") == "proveniq/lockers/locker-001/commands"
    for topic in (commands_topic("a.b_c"), replies_topic("a.b_c"), status_topic("a.b_c")):
        assert ref_from_topic(topic) == "a.b_c"


@pytest.mark.parametrize(
    "ref", ["", "a/b", "locker+", "locker#", "-lead", ".hidden", "x" * 65, "ok\n", "é"]
)
def test_bad_refs_are_rejected(ref: str) -> None:
    """Refs with slashes, MQTT wildcards, a bad first character or bad length are refused."""
    with pytest.raises(ValueError, match="invalid locker ref"):
        validate_ref(ref)
    with pytest.raises(ValueError, match="invalid locker ref"):
        commands_topic(ref)


@pytest.mark.parametrize(
    "topic",
    [
        "proveniq/lockers/a/other",
        "proveniq/lockers/a/b/replies",
        "other/lockers/a/replies",
        "proveniq/lockers/+/replies",
        "replies",
    ],
)
def test_foreign_topics_are_rejected(topic: str) -> None:
    """ref_from_topic refuses topics outside the locker tree."""
    with pytest.raises(ValueError, match="locker"):
        ref_from_topic(topic)


def test_seed_profile_matches_its_percentiles() -> None:
    """Samples of the seed profile have a median near 0.5 s and a p99 near 5 s."""
    rng = random.Random(1234)
    profile = LatencyProfile.parse("seed")
    samples = [profile.sample(rng) for _ in range(40_000)]
    cuts = statistics.quantiles(samples, n=100)
    assert cuts[49] == pytest.approx(0.5, rel=0.05)
    assert cuts[98] == pytest.approx(5.0, rel=0.15)


def test_custom_and_instant_profiles() -> None:
    """'instant' samples 0; 'P50:P99' reads milliseconds; equal percentiles are constant."""
    rng = random.Random(7)
    assert LatencyProfile.parse("instant").sample(rng) == 0.0
    assert LatencyProfile.parse(" 200:2000 ") == LatencyProfile(200, 2000)
    assert LatencyProfile.parse("50:50").sample(rng) == pytest.approx(0.05)


@pytest.mark.parametrize("text", ["", "fast", "500", "a:b", "500:50", "-1:10", "1:inf"])
def test_bad_profiles_are_rejected(text: str) -> None:
    """Unknown names, missing ':', non-numbers and p50 > p99 raise a clear ValueError."""
    with pytest.raises(ValueError, match="invalid latency profile"):
        LatencyProfile.parse(text)


def test_fleet_specs_spread_sites() -> None:
    """fleet_specs numbers refs from 001 and puts sites at least 250 m apart."""
    specs = fleet_specs(10)
    assert [s.ref for s in specs][:2] == ["locker-001", "locker-002"]
    assert specs[-1].ref == "locker-010"
    assert len({s.locker_id for s in specs}) == 10
    assert all(s.locker_id.startswith("LKR-") and len(s.locker_id) == 12 for s in specs)
    for a in specs:
        for b in specs:
            if a is not b:
                dy = (a.lat - b.lat) * 111_320
                dx = (a.lon - b.lon) * 111_320 * 0.658  # cos(48.86°)
                assert (dx * dx + dy * dy) ** 0.5 > 250
