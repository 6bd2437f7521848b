"""Settings, read from ``PROVENIQ_*`` environment variables (and CLI flags that set them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import platformdirs
from pydantic import Field, PositiveFloat, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Role = Literal["api", "worker", "all"]


def mqtt_url_for_messages(url: str) -> str:
    """An MQTT URL fit to print or log: its password, if it has one, shown as ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "the MQTT URL (unparsable)" if "@" in url else url
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("proveniq", appauthor=False))


class Settings(BaseSettings):
    """Every knob of a Core process. Durations are in seconds unless the name says ``_ms``."""

    model_config = SettingsConfigDict(env_prefix="PROVENIQ_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="data dir (embedded DB, keys)")
    host: str = "127.0.0.1"
    port: int = Field(8700, ge=0, le=65535)
    role: Role = "all"
    database_url: str | None = None
    mqtt_url: str | None = None
    pool_min: int = Field(2, ge=1)
    pool_max: int = Field(20, ge=1)

    link_sync_budget_ms: int = Field(2000, ge=1, description="how long a request waits to link")
    locker_command_timeout: float = Field(30.0, gt=0, description="how long a command may take")
    mqtt_keepalive: int = Field(
        10, ge=2, description="MQTT keepalive, s: a silent broker is noticed within about 1.5x"
    )
    ledger_timeout: float = Field(
        5.0, gt=0, description="how long a request waits for a database connection"
    )
    post_commit_timeout: float = Field(2.0, gt=0, description="lock wait to queue verification")

    retry_base: float = Field(300.0, gt=0, description="first retry of a deferred link, doubling")
    retry_max_attempts: int = Field(5, ge=1, description="retries before an entry is exhausted")
    retry_unreachable_limit: float = Field(
        3600.0, gt=0, description="how long an unreachable locker is retried before escalating"
    )

    max_body_bytes: int = Field(1 << 20, ge=1, description="largest request body: 413 above")
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="largest request line and headers: 431 above"
    )
    rate_limit_per_key: float = Field(
        1000.0, ge=0, description="requests a second per API key (0: no limit), in each process"
    )
    rate_limit_per_ip: float = Field(
        2000.0, ge=0, description="requests a second per client address (0: no limit), per process"
    )
    rate_limit_auth_failures_per_ip: float = Field(
        10.0, ge=0, description="failed authentications a second per client address (0: no limit)"
    )
    rate_limit_burst: float = Field(
        2.0, gt=0, description="burst: this many seconds' worth of requests at once"
    )

    sim_lockers: int = Field(10, ge=0, le=1000, description="embedded fleet size")
    sim_profile: str = "instant"

    verify_timestamp_skew: float = Field(300.0, gt=0, description="evidence clock tolerance")
    verify_collect_timeout: float = Field(30.0, gt=0)
    verify_max_attempts: int = Field(8, ge=1, description="collections before escalating")
    verify_concurrency: int = Field(
        64, ge=1, description="evidence collections one worker waits on at once"
    )
    verify_retry_base: float = Field(
        30.0, gt=0, description="first retry of a failed collection, doubling (8 tries: ~1 h)"
    )
    verify_blank_stddev: float = Field(
        4.0, ge=0, le=128, description="a photo's grey-level spread below this is blank"
    )
    verify_duplicate_distance: int = Field(
        4, ge=0, le=8, description="pHash distance to another asset's photo: a duplicate"
    )
    verify_similar_distance: int = Field(
        8,
        ge=0,
        le=8,  # the photo index finds every photo within 8 bits (docs/architecture.md §5)
        description="pHash distance up to this (above duplicate): review; at most 8",
    )
    review_timeout: float = Field(86400.0, gt=0, description="a review expires, undecided")
    review_reasons_approve: list[str] = Field(
        default=["evidence_sufficient", "accuracy_acceptable", "resemblance_explained", "other"],
        min_length=1,
        description="reason codes of an approval (JSON list)",
    )
    review_reasons_reject: list[str] = Field(
        default=["wrong_item", "outside_site", "photo_unusable", "duplicate", "other"],
        min_length=1,
        description="reason codes of a rejection (JSON list)",
    )
    console_idle_timeout: float = Field(
        1800.0, gt=0, description="a console session ends after this long without activity"
    )
    poll_interval: float = Field(1.0, gt=0, description="worker fallback poll when no NOTIFY")

    saga_lease: float = Field(15.0, gt=0, description="how long a saga claim holds unrenewed")
    saga_concurrency: int = Field(32, ge=1, description="sagas one worker drives at once")
    saga_compensation_rounds: int = Field(5, ge=1, description="tries of a failing compensation")
    saga_compensation_retry_base: float = Field(5.0, gt=0, description="first retry delay")

    webhook_timeout: float = Field(10.0, gt=0, description="how long one webhook POST may take")
    webhook_concurrency: int = Field(16, ge=1, description="webhook POSTs one worker makes at once")
    webhook_retry_schedule: list[PositiveFloat] = Field(
        default=[5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
        description="seconds before each webhook retry (JSON list; one attempt more than its "
        "length); keep the default (over 24 h) outside a lab",
    )
    webhook_allow_private: bool = Field(
        False, description="allow webhooks to loopback and private networks (lab setups only)"
    )
    secret_key: SecretStr | None = Field(
        None,
        description="seals webhook secrets at rest (32+ characters; 'new,old' to rotate); "
        "unset: a key file under home",
    )

    audit_checkpoint_interval: float = Field(
        300.0, gt=0, description="how often a worker signs an audit checkpoint"
    )
    audit_checkpoint_dir: Path | None = Field(
        None, description="where checkpoints are written (default: <home>/audit-checkpoints)"
    )
    audit_signing_key_file: Path | None = Field(
        None, description="Ed25519 PEM key (default: <home>/audit-signing-key.pem, created)"
    )

    log_level: str = "info"
    log_json: bool = True

    @property
    def embedded_db(self) -> bool:
        return self.database_url is None

    @property
    def embedded_broker(self) -> bool:
        return self.mqtt_url is None

    @property
    def evidence_dir(self) -> Path:
        return self.home / "evidence"

    @property
    def checkpoint_dir(self) -> Path:
        return self.audit_checkpoint_dir or self.home / "audit-checkpoints"

    @property
    def signing_key_file(self) -> Path:
        return self.audit_signing_key_file or self.home / "audit-signing-key.pem"
