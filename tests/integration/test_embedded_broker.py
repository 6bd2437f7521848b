"""The embedded MQTT broker (amqtt, in Core's process) admits only Core and its simulated
fleet: one user whose password is generated once and kept under the data dir, never printed.

These tests start the embedded broker themselves: the suite's shared broker is Mosquitto."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiomqtt
import httpx
import pytest

from proveniq_core.api.app import create_app
from proveniq_core.config import Settings, mqtt_url_for_messages
from proveniq_core.embedded import EmbeddedBroker, write_private
from proveniq_core.locker.gateway import mqtt_credentials
from proveniq_core.service import running
from tests.integration.test_observability import json_log_lines


async def connect(port: int, **credentials: str) -> None:
    """Connect to the broker on ``port`` and disconnect; raises ``MqttError`` when refused."""
    async with aiomqtt.Client("127.0.0.1", port, timeout=10, **credentials) as client:  # type: ignore[arg-type]
        await client.publish("proveniq/test/hello", b"hi", qos=1)


async def test_the_broker_admits_only_its_user_with_the_kept_password(tmp_path: Path) -> None:
    """Anonymous clients, a wrong password and another user are refused; the password kept
    in <home>/mqtt-password (mode 0600) is let in, and a restart keeps the same one."""
    broker = EmbeddedBroker(tmp_path)
    url = await broker.start()
    try:
        user, password = mqtt_credentials(url)
        kept = tmp_path / "mqtt-password"
        assert user == "proveniq"
        assert password and kept.read_text().strip() == password
        assert kept.stat().st_mode & 0o077 == 0, "readable by others"
        assert (tmp_path / "mqtt-users").stat().st_mode & 0o077 == 0
        assert url == f"mqtt://proveniq:{password}@127.0.0.1:{broker.port}"

        with pytest.raises(aiomqtt.MqttError):
            await connect(broker.port)
        with pytest.raises(aiomqtt.MqttError):
            await connect(broker.port, username="proveniq", password=password + "x")
        with pytest.raises(aiomqtt.MqttError):
            await connect(broker.port, username="proveniq", password="")
        with pytest.raises(aiomqtt.MqttError):
            await connect(broker.port, username="someone", password=password)
        await connect(broker.port, username="proveniq", password=password)
    finally:
        await broker.stop()

    again = EmbeddedBroker(tmp_path)
    assert await again.start() == f"mqtt://proveniq:{password}@127.0.0.1:{again.port}"
    try:
        await connect(again.port, username="proveniq", password=password)
    finally:
        await again.stop()


async def test_an_empty_password_file_gets_a_new_password(tmp_path: Path) -> None:
    """A password file left empty is replaced by a generated password, not an empty one."""
    (tmp_path / "mqtt-password").write_text("\n")
    broker = EmbeddedBroker(tmp_path)
    url = await broker.start()
    try:
        _, password = mqtt_credentials(url)
        assert password and len(password) >= 32
        assert (tmp_path / "mqtt-password").read_text().strip() == password
        with pytest.raises(aiomqtt.MqttError):
            await connect(broker.port, username="proveniq", password="")
        await connect(broker.port, username="proveniq", password=password)
    finally:
        await broker.stop()


async def test_core_and_its_fleet_sign_in_to_the_embedded_broker_and_link(
    database_url: str, tmp_path: Path
) -> None:
    """Core started without an MQTT URL runs the embedded broker with credentials: its
    gateway and simulated fleet sign in, an asset links in the request, and neither the
    progress lines nor the logs carry the password."""
    said: list[str] = []
    settings = Settings(
        home=tmp_path,
        database_url=database_url,
        mqtt_url=None,
        sim_lockers=2,
        sim_profile="instant",
        poll_interval=0.2,
    )
    with json_log_lines() as lines:
        async with running(settings, progress=said.append) as core:
            _, password = mqtt_credentials(core.mqtt_url)
            assert password == (tmp_path / "mqtt-password").read_text().strip()
            assert core.fleet is not None and core.bootstrap is not None
            transport = httpx.ASGITransport(app=create_app(core))
            headers = {"Authorization": f"Bearer {core.bootstrap.token}"}
            async with httpx.AsyncClient(
                transport=transport, base_url="http://core.test", headers=headers
            ) as http:
                body = {
                    "name": "Omega Speedmaster",
                    "category": "watch",
                    "lockerRef": core.fleet.devices[0].ref,
                }
                created = await http.post("/api/assets", json=body)
            assert created.status_code == 201, created.text
            assert created.json()["status"] == "linked"
            port = int(core.mqtt_url.rsplit(":", 1)[1])
            with pytest.raises(aiomqtt.MqttError):
                await connect(port)  # the broker Core runs refuses anonymous clients

    assert f"embedded MQTT broker on mqtt://proveniq:***@127.0.0.1:{port}" in said
    assert password not in "\n".join(said)
    started = [line for line in lines if line["event"] == "locker.fleet_started"]
    assert started and started[0]["url"] == f"mqtt://proveniq:***@127.0.0.1:{port}"
    assert not [line for line in lines if password in str(line)]


async def test_simulate_prints_the_broker_url_without_its_password(tmp_path: Path) -> None:
    """``proveniq simulate`` on a URL with credentials signs its fleet in and prints the URL
    with the password masked."""
    broker = EmbeddedBroker(tmp_path)
    url = await broker.start()
    _, password = mqtt_credentials(url)
    assert password
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proveniq_core",
        "simulate",
        "--lockers",
        "1",
        "--prefix",
        "masked-",
        "--profile",
        "instant",
        env=env | {"PROVENIQ_MQTT_URL": url, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # The fleet's retained "online" is what the broker holds once it signed in.
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username="proveniq", password=password
        ) as watcher:
            await watcher.subscribe("proveniq/lockers/masked-001/status", qos=1)
            async with asyncio.timeout(30):
                async for message in watcher.messages:
                    if message.payload == b"online":
                        break
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        await broker.stop()
    printed = out.decode() + err.decode()
    assert proc.returncode == 0, printed
    assert f"1 lockers masked-001…masked-001 on mqtt://proveniq:***@127.0.0.1:{broker.port}" in (
        printed
    )
    assert password not in printed


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1883"),
        ("mqtt://core:s3cr%40t@broker:1883", "mqtt://core:***@broker:1883"),
        ("mqtt://core:p@ss@broker:1883", "mqtt://core:***@broker:1883"),
        ("mqtt://core@broker:1883", "mqtt://core@broker:1883"),
        ("mqtt://core:@broker", "mqtt://core:***@broker"),
        ("mqtt://u:pw@[::1", "the MQTT URL (unparsable)"),
    ],
)
def test_a_printed_mqtt_url_never_shows_its_password(url: str, shown: str) -> None:
    assert mqtt_url_for_messages(url) == shown


async def test_a_password_file_others_can_read_is_named_in_a_warning(tmp_path: Path) -> None:
    """A kept password readable by others still works, and a warning names its file."""
    kept = tmp_path / "mqtt-password"
    kept.write_text("chosen-by-hand\n")
    kept.chmod(0o644)
    broker = EmbeddedBroker(tmp_path)
    with json_log_lines() as lines:
        url = await broker.start()
    try:
        assert mqtt_credentials(url) == ("proveniq", "chosen-by-hand")
        await connect(broker.port, username="proveniq", password="chosen-by-hand")
    finally:
        await broker.stop()
    warned = [line for line in lines if line["event"] == "mqtt_password_file_readable_by_others"]
    assert [line["path"] for line in warned] == [str(kept)]


def test_a_private_file_is_written_without_hard_links_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without hard links a new file is still written (mode 0600) and an
    existing one still kept."""

    def no_links(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "secret"
    assert write_private(path, "first\n", replace=False)
    assert not write_private(path, "second\n", replace=False)
    assert path.read_text() == "first\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert list(tmp_path.iterdir()) == [path], "nothing left aside"
