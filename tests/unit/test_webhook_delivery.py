"""Webhook signing, Retry-After and the retry schedule, without I/O."""

from __future__ import annotations

import base64
import email.utils
from datetime import UTC, datetime, timedelta

import pydantic
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from proveniq_core.config import Settings
from proveniq_core.webhooks import signing
from proveniq_core.webhooks.delivery import MAX_ATTEMPTS, SCHEDULE, Attempt, decide

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def answer(status: int | None, retry_after: float | None = None) -> Attempt:
    error = None if status is not None and status < 300 else "failed"
    return Attempt(NOW, 12.5, status, error, retry_after)


def test_signature_verifies_with_the_standardwebhooks_library() -> None:
    """Headers signed with a generated secret verify with the library; a changed body not."""
    secret = signing.new_secret()
    at = datetime.now(UTC)
    body = '{"type":"asset.linked","data":{"assetId":"a1"}}'
    headers = signing.headers(secret, "msg_1", at, body)
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    assert Webhook(secret).verify(body, headers)["data"] == {"assetId": "a1"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("a1", "a2"), headers)


@pytest.mark.parametrize(
    "secret",
    ["hunter2", "whsec_", "whsec_!!!!", "whsec_" + base64.b64encode(b"short").decode()],
)
def test_malformed_secrets_are_refused(secret: str) -> None:
    """A secret must be whsec_ + base64 of 24 to 64 bytes."""
    with pytest.raises(ValueError, match="must"):
        signing.secret_key(secret)


def test_unpadded_secret_is_read_as_the_library_reads_it() -> None:
    """Padding is optional, as in the standardwebhooks libraries."""
    key = bytes(range(25))
    unpadded = "whsec_" + base64.b64encode(key).decode().rstrip("=")
    assert signing.secret_key(unpadded) == key


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (email.utils.format_datetime(NOW + timedelta(minutes=5), usegmt=True), 300.0),
        (email.utils.format_datetime(NOW - timedelta(minutes=5), usegmt=True), 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(value: str | None, seconds: float) -> None:
    """Retry-After as delay-seconds or an HTTP date; past dates are 0, junk is ignored."""
    assert signing.retry_after(value, NOW) == seconds


def test_schedule_spans_more_than_a_day_and_jitter_only_lengthens() -> None:
    """Retries over more than 24 h; each delay is its step plus at most 20 %."""
    assert sum(SCHEDULE) >= 24 * 3600
    for attempt, step in enumerate(SCHEDULE, start=1):
        low = decide(attempt, answer(500), rand=lambda: 0.0)
        high = decide(attempt, answer(None), rand=lambda: 0.999)
        assert (low.status, low.delay) == ("pending", step)
        assert high.delay is not None and step < high.delay < step * 1.2


def test_outcomes() -> None:
    """2xx delivers; 410 disables at once without an alert; the last failure disables with
    one; Retry-After on 429/503 waits at least that long, capped at a day, and is ignored
    on other statuses."""
    assert decide(1, answer(204)).status == "delivered"
    gone = decide(1, answer(410))
    assert (gone.status, gone.exhausted) == ("failed", False) and gone.disable
    last = decide(MAX_ATTEMPTS, answer(500))
    assert (last.status, last.exhausted) == ("failed", True) and last.disable
    assert decide(1, answer(429, 600.0), rand=lambda: 0.0).delay == 600.0
    assert decide(3, answer(503, 1.0), rand=lambda: 0.0).delay == SCHEDULE[2]
    assert decide(1, answer(503, 10 * 86400.0), rand=lambda: 0.0).delay == 86400.0
    assert decide(1, answer(500, 600.0), rand=lambda: 0.0).delay == SCHEDULE[0]


def test_the_default_schedule_setting_is_the_production_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unset, PROVENIQ_WEBHOOK_RETRY_SCHEDULE is the schedule above: over more than 24 h."""
    monkeypatch.delenv("PROVENIQ_WEBHOOK_RETRY_SCHEDULE", raising=False)
    assert Settings().webhook_retry_schedule == list(SCHEDULE)
    last = decide(MAX_ATTEMPTS, answer(500))
    assert last.disable == f"{MAX_ATTEMPTS} attempts failed over more than 24 h (last: failed)"


def test_a_lab_schedule_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable is a JSON list of seconds; a delivery then gets one attempt more than the
    list is long, each retry after its step (jitter only lengthens), then fails, disables the
    endpoint with an alert and says how long it was retried."""
    monkeypatch.setenv("PROVENIQ_WEBHOOK_RETRY_SCHEDULE", "[1, 2.5]")
    schedule = Settings().webhook_retry_schedule
    assert schedule == [1.0, 2.5]
    first = decide(1, answer(500), rand=lambda: 0.0, schedule=schedule)
    second = decide(2, answer(None), rand=lambda: 0.999, schedule=schedule)
    assert (first.status, first.delay) == ("pending", 1.0)
    assert second.status == "pending" and second.delay is not None
    assert 2.5 < second.delay < 3.0
    last = decide(3, answer(500), schedule=schedule)
    assert (last.status, last.exhausted) == ("failed", True)
    assert last.disable == "3 attempts failed over more than 3.5 s (last: failed)"
    assert decide(3, answer(204), schedule=schedule).status == "delivered"
    # The same attempt on the production schedule is still retried, 30 min later.
    assert decide(3, answer(500), rand=lambda: 0.0).delay == 1800.0


@pytest.mark.parametrize("value", ["[]", "[0]", "[-5]", '[1, "soon"]', "300"])
def test_a_schedule_without_positive_steps_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """An empty list, a step not above 0, a word, a bare number: the settings refuse it."""
    monkeypatch.setenv("PROVENIQ_WEBHOOK_RETRY_SCHEDULE", value)
    with pytest.raises(pydantic.ValidationError, match="webhook_retry_schedule"):
        Settings()
