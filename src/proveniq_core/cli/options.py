"""The CLI's options, defined once; every flag names its ``PROVENIQ_*`` variable in --help."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from proveniq_core.cli.render import CliError
from proveniq_core.config import default_home

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8700


class Role(StrEnum):
    """What a ``serve`` process runs."""

    API = "api"
    WORKER = "worker"
    ALL = "all"


class LogFormat(StrEnum):
    """How ``serve`` writes its log lines on stderr."""

    JSON = "json"
    CONSOLE = "console"


class LogLevel(StrEnum):
    """The least severe log lines ``serve`` writes."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class EventLoop(StrEnum):
    """The asyncio event loop ``serve`` runs on."""

    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


def choices(enum: type[StrEnum]) -> str:
    """The metavar of a choice: ``a|b|c``."""
    return "|".join(member.value for member in enum)


def home_dir(home: Path | None) -> Path:
    """``--home`` (or ``PROVENIQ_HOME``, which typer maps onto it), else the user data dir."""
    return (home or default_home()).expanduser()


def default_url() -> str:
    """The URL the CLI calls without ``--url``: the one ``serve`` listens on with the same
    ``PROVENIQ_HOST`` and ``PROVENIQ_PORT``; a wildcard listen address is called on loopback."""
    host = os.environ.get("PROVENIQ_HOST") or DEFAULT_HOST
    port = os.environ.get("PROVENIQ_PORT") or str(DEFAULT_PORT)
    return service_url(host, port)


def service_url(host: str, port: int | str) -> str:
    """``http://host:port`` for a listen address (``0.0.0.0`` and ``::`` become loopback)."""
    if host in ("", "0.0.0.0"):  # noqa: S104 (naming the wildcard, not binding it)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def bootstrap_key(home: Path | None) -> str:
    """The admin key ``serve`` wrote under the data dir, or a one-line error naming where."""
    from proveniq_core.service import BOOTSTRAP_FILE  # imported here: the service is heavy

    path = home_dir(home) / BOOTSTRAP_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise CliError(
            f"no API key: --api-key / PROVENIQ_API_KEY is unset and there is no bootstrap key "
            f"at {path} ('proveniq serve' writes it there on its first start; --home / "
            "PROVENIQ_HOME names another data dir)"
        ) from None
    except OSError as exc:
        raise CliError(f"cannot read the bootstrap key at {path}: {exc.strerror}") from None


def api_key(key: str | None, home: Path | None) -> str:
    """``--api-key``, else the bootstrap key under ``--home``."""
    return key or bootstrap_key(home)


def group(help: str, short_help: str | None = None, **settings: Any) -> typer.Typer:
    """A command group, with the CLI's help style: plain text, as click prints it (no markup
    to escape, no type shown after a flag)."""
    settings.setdefault("no_args_is_help", True)
    return typer.Typer(
        help=help,
        short_help=short_help,
        rich_markup_mode=None,
        add_completion=False,
        **settings,
    )


# -- the shared options ---------------------------------------------------------------------

Home = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="PROVENIQ_HOME",
        metavar="DIR",
        help=f"Data dir: the embedded database, evidence, the bootstrap key. "
        f"[default: {default_home()}]",
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="PROVENIQ_DATABASE_URL",
        metavar="CONNINFO",
        help="PostgreSQL conninfo. Unset: the embedded PostgreSQL under --home.",
    ),
]
MqttUrl = Annotated[
    str | None,
    typer.Option(
        "--mqtt-url",
        envvar="PROVENIQ_MQTT_URL",
        metavar="URL",
        help="MQTT broker, mqtt://host:port. Unset: an embedded broker on loopback.",
    ),
]
Url = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="PROVENIQ_URL",
        metavar="URL",
        help="The running service. Unset: http://PROVENIQ_HOST:PROVENIQ_PORT, the address "
        f"'proveniq serve' listens on with the same variables (now {default_url()}).",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="PROVENIQ_API_KEY",
        metavar="KEY",
        help="A key with ops:read (to look) or ops:write (to act). "
        "Unset: the bootstrap admin key under --home.",
    ),
]
Json = Annotated[
    bool,
    typer.Option(
        "--json", envvar="PROVENIQ_JSON", help="Print JSON (the API's shape) instead of text."
    ),
]
