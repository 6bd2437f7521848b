"""Webhook signing, Retry-After and the retry schedule, without I/O."""

from __future__ import annotations

import base64
import email.utils
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

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
