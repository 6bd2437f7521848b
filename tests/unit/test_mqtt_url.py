"""MQTT URLs carry the broker's credentials: ``mqtt://user:password@host:port``."""

from __future__ import annotations

import pytest

from proveniq_core.locker.gateway import mqtt_credentials, parse_mqtt_url


def test_credentials_come_from_the_user_info_percent_decoded() -> None:
    """A password with reserved characters is written percent-encoded and read back as is;
    host and port are unaffected by the user info."""
    url = "mqtt://core:p%40ss%3Aw%2Frd@broker.internal:1884"
    assert mqtt_credentials(url) == ("core", "p@ss:w/rd")
    assert parse_mqtt_url(url) == ("broker.internal", 1884)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker:1883", (None, None)),
        ("mqtt://broker", (None, None)),
        ("mqtt://sim@broker:1883", ("sim", "")),
    ],
)
def test_no_user_info_is_anonymous(url: str, expected: tuple[str | None, str | None]) -> None:
    """Without user info the client connects anonymously; a user alone has an empty
    password."""
    assert mqtt_credentials(url) == expected
