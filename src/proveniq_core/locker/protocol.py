"""The locker MQTT protocol, version 1: topics and wire messages (docs/architecture.md §4).

Core publishes a ``Command`` on ``proveniq/lockers/{ref}/commands``; the device answers
with a ``Reply`` carrying the same ``commandId`` on ``.../replies`` and keeps a retained
``online`` / ``offline`` on ``.../status`` (its last will is ``offline``). All QoS 1, JSON.
A command may carry the W3C ``traceparent`` of the span that sent it, and ``replyTo``: a
topic under the device's own replies topic (``.../replies/{core process}``) on which a
device that knows the field answers, so the reply reaches the process that asked (both
optional; a device that ignores ``replyTo`` answers on ``.../replies``). Each Core process
keeps a retained ``online`` on ``proveniq/core/{process}/status``, cleared when it goes.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

TOPIC_ROOT = "proveniq/lockers"
CORE_ROOT = "proveniq/core"
CONTROL_TOPIC = "proveniq/sim/control"
LOCKER_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

CommandType = Literal["link", "unlink", "collect_evidence", "ping"]
ReplyErrorCode = Literal["hardware_fault", "busy", "unknown_asset"]
TopicKind = Literal["commands", "replies", "status"]

STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"

_REF_RE = re.compile(LOCKER_REF_PATTERN)
_M = TypeVar("_M", bound=BaseModel)
_TOPIC_KINDS = ("commands", "replies", "status")


def validate_ref(ref: str) -> str:
    """Return ``ref`` if it is a valid locker ref, else raise ``ValueError``.

    A ref becomes one topic level, so it may hold no ``/`` and no MQTT wildcard.
    """
    if not isinstance(ref, str) or _REF_RE.fullmatch(ref) is None:
        raise ValueError(
            f"invalid locker ref {ref!r}: 1-64 characters from [A-Za-z0-9._-], "
            "starting with a letter or digit"
        )
    return ref


def _topic(ref: str, kind: TopicKind) -> str:
    return f"{TOPIC_ROOT}/{validate_ref(ref)}/{kind}"


def commands_topic(ref: str) -> str:
    """Topic on which the locker ``ref`` receives commands."""
    return _topic(ref, "commands")


def replies_topic(ref: str) -> str:
    """Topic on which the locker ``ref`` publishes replies."""
    return _topic(ref, "replies")


def status_topic(ref: str) -> str:
    """Retained presence topic of the locker ``ref``."""
    return _topic(ref, "status")


def directed_replies_topic(ref: str, process: str) -> str:
    """Topic on which the locker ``ref`` answers the Core process ``process`` (``replyTo``)."""
    return f"{replies_topic(ref)}/{validate_ref(process)}"


def core_status_topic(process: str) -> str:
    """Retained presence topic of the Core process ``process``."""
    return f"{CORE_ROOT}/{validate_ref(process)}/status"


def split_reply_topic(topic: str) -> tuple[str, str | None]:
    """``(ref, process)`` of a replies topic: process None for ``.../replies``, the
    process a ``.../replies/{process}`` answer is meant for; ``ValueError`` otherwise."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or "/".join(parts[:2]) != TOPIC_ROOT or parts[3] != "replies":
        raise ValueError(f"not a replies topic: {topic!r}")
    return validate_ref(parts[2]), validate_ref(parts[4]) if len(parts) == 5 else None


def ref_from_topic(topic: str) -> str:
    """Extract the locker ref from a commands, replies or status topic."""
    root, sep, rest = topic.rpartition("/")
    prefix, _, ref = root.rpartition("/")
    if not sep or prefix != TOPIC_ROOT or rest not in _TOPIC_KINDS:
        raise ValueError(f"not a locker topic: {topic!r}")
    return validate_ref(ref)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Command(_Wire):
    """Core → device."""

    v: Literal[1] = 1
    commandId: str = Field(min_length=1, max_length=255)
    type: CommandType
    assetId: str | None = None
    issuedAt: AwareDatetime
    traceparent: str | None = Field(None, max_length=256)
    """Optional W3C trace context of the command; a device that traces continues it, one
    that does not ignores it, and a malformed one is ignored, never refused."""
    replyTo: str | None = Field(None, max_length=256)
    """Optional topic to answer on, under the device's own replies topic; a device that
    does not know it (or gets one outside its own topics) answers on ``.../replies``."""


class ReplyError(_Wire):
    """Why a device refused or failed a command."""

    code: ReplyErrorCode
    detail: str = ""


class Reply(_Wire):
    """Device → Core: ``ok`` with a ``result``, or not ``ok`` with an ``error``."""

    v: Literal[1] = 1
    commandId: str = Field(min_length=1, max_length=255)
    ok: bool
    result: dict[str, Any] | None = None
    error: ReplyError | None = None

    @model_validator(mode="after")
    def _ok_matches_payload(self) -> Self:
        if self.ok and (self.result is None or self.error is not None):
            raise ValueError("an ok reply carries a result and no error")
        if not self.ok and (self.error is None or self.result is not None):
            raise ValueError("a failed reply carries an error and no result")
        return self


def encode(model: BaseModel) -> bytes:
    """Serialise a wire message to JSON bytes, omitting absent optional fields."""
    return model.model_dump_json(exclude_none=True).encode()


def _decode(cls: type[_M], data: bytes | str) -> _M:
    try:
        return cls.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"malformed {cls.__name__}: {problems}") from None


def decode_command(data: bytes | str) -> Command:
    """Parse a command payload; ``ValueError`` if it is not a valid v1 command."""
    return _decode(Command, data)


def decode_reply(data: bytes | str) -> Reply:
    """Parse a reply payload; ``ValueError`` if it is not a valid v1 reply."""
    return _decode(Reply, data)


__all__ = [
    "CONTROL_TOPIC",
    "LOCKER_REF_PATTERN",
    "STATUS_OFFLINE",
    "STATUS_ONLINE",
    "TOPIC_ROOT",
    "Command",
    "CommandType",
    "Reply",
    "ReplyError",
    "ReplyErrorCode",
    "commands_topic",
    "decode_command",
    "decode_reply",
    "encode",
    "ref_from_topic",
    "replies_topic",
    "status_topic",
    "validate_ref",
]
