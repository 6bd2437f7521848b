"""Shared fixtures for integration tests (real servers only)."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator

import pytest_asyncio


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest_asyncio.fixture(scope="session")
async def mqtt_url() -> AsyncIterator[str]:
    """URL of a real MQTT broker: the one on 127.0.0.1:1883, else an in-process amqtt.

    Set ``PROVENIQ_TEST_MQTT=embedded`` to use amqtt even when 1883 is open.
    """
    if os.environ.get("PROVENIQ_TEST_MQTT") != "embedded" and _port_open("127.0.0.1", 1883):
        yield "mqtt://127.0.0.1:1883"
        return
    from amqtt.broker import Broker

    port = _free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        await broker.shutdown()
