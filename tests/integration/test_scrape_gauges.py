"""The gauges read at scrape time: the broker connection, the pool, the backlogs an operator is
paged on and the open ops alerts, each exported with the value the database holds."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proveniq_core import db
from proveniq_core.ledger import alerts
from proveniq_core.observability import metrics
from proveniq_core.observability.gauges import ScrapeGauges
from proveniq_core.resilience.breaker import BreakerRegistry
from proveniq_core.service import database_backlog

TENANT = "acme"


@dataclass
class FakeGateway:
    connected: bool


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scraped() -> Samples:
    """Every sample of the registry as Prometheus reads it from ``/metrics``."""
    text = generate_latest(metrics.REGISTRY).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; NaN when it is not exported at all."""
    return samples.get((name, frozenset(labels.items())), math.nan)


async def seed_backlog(pool: db.Pool) -> None:
    """Two claimable sagas (one due 90 s, one whose owner's lease ran out 30 s ago), sagas
    that are not claimable, a pending review 19 h old, unsealed audit rows, webhook endpoints."""
    async with db.transaction(pool) as conn:
        await conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (TENANT, TENANT))
        sagas = [
            # due 90 s ago, never claimed
            ("running", "now() - interval '90 seconds'", "NULL", "NULL"),
            # claimed long ago by a process whose lease ran out 30 s ago
            ("compensating", "now() - interval '1 hour'", "now() - interval '30 seconds'", "'w1'"),
            # held by a live lease
            ("running", "now() - interval '1 hour'", "now() + interval '10 seconds'", "'w2'"),
            # parked until later, and parked for an operator
            ("running", "now() + interval '5 minutes'", "NULL", "NULL"),
            ("running", "'infinity'", "NULL", "NULL"),
            # ended
            ("completed", "now() - interval '2 hours'", "NULL", "NULL"),
            ("compensation_failed", "now() - interval '2 hours'", "NULL", "NULL"),
        ]
        for status, run_at, lease_until, owner in sagas:
            await conn.execute(
                "INSERT INTO sagas (id, name, tenant_id, status, input, run_at, lease_until, owner)"
                f" VALUES (%s, 'asset_registration', %s, %s, '{{}}', {run_at}, {lease_until},"
                f" {owner})",
                (uuid.uuid4(), TENANT, status),
            )
        await conn.execute(
            "INSERT INTO lockers (id, tenant_id, locker_ref, site_lat, site_lon, geofence_m)"
            " VALUES (%s, %s, 'gauge-locker', 0, 0, 100)",
            (uuid.uuid4(), TENANT),
        )
        for age_h, status in ((19, "pending"), (2, "pending"), (30, "expired"), (40, "approved")):
            asset, verification = uuid.uuid4(), uuid.uuid4()
            await conn.execute(
                "INSERT INTO assets (id, tenant_id, name, category, locker_ref, status)"
                " VALUES (%s, %s, 'Watch', 'watch', 'gauge-locker', 'linked')",
                (asset, TENANT),
            )
            await conn.execute(
                "INSERT INTO verifications (id, asset_id, tenant_id, status)"
                " VALUES (%s, %s, %s, 'manual_review')",
                (verification, asset, TENANT),
            )
            await conn.execute(
                "INSERT INTO reviews (id, verification_id, asset_id, tenant_id, status, due_at,"
                " created_at, expired_at, decided_at)"
                " VALUES (%s, %s, %s, %s, %s, now(), now() - make_interval(hours => %s),"
                " CASE WHEN %s = 'expired' THEN now() END,"
                " CASE WHEN %s = 'approved' THEN now() END)",
                (uuid.uuid4(), verification, asset, TENANT, status, age_h, status, status),
            )
        for age_s in (120, 5):
            await conn.execute(
                "INSERT INTO audit_log (at, actor, action, entity_type, entity_id)"
                " VALUES (now() - make_interval(secs => %s), 'test', 'test.row', 'test', 'x')",
                (age_s,),
            )
        for status in ("active", "disabled", "disabled"):
            await conn.execute(
                "INSERT INTO webhook_endpoints (id, tenant_id, url, events, secret, status,"
                " disabled_at) VALUES (%s, %s, 'https://hooks.example/x', '{asset.created}',"
                " 'fernet:x', %s, CASE WHEN %s = 'disabled' THEN now() END)",
                (uuid.uuid4(), TENANT, status, status),
            )


async def test_backlogs_are_exported_as_the_database_holds_them(pool: db.Pool) -> None:
    """Due and claimable sagas (not held, parked or ended ones) and how long the oldest has
    waited; pending reviews and the oldest's age; unsealed audit rows and the oldest's age;
    webhook endpoints by status."""
    await seed_backlog(pool)
    gauges = ScrapeGauges(
        BreakerRegistry(), database_backlog(pool), pool_stats=pool.get_stats, ttl=0
    )
    await gauges.refresh()
    s = scraped()
    assert value(s, "core_sagas_due") == 2
    assert 90 <= value(s, "core_sagas_oldest_due_seconds") < 150
    assert value(s, "core_reviews_pending") == 2
    assert 19 * 3600 <= value(s, "core_reviews_oldest_pending_seconds") < 19 * 3600 + 60
    assert value(s, "core_audit_unsealed_rows") == 2
    assert 120 <= value(s, "core_audit_oldest_unsealed_seconds") < 180
    assert value(s, "core_webhook_endpoints", status="active") == 1
    assert value(s, "core_webhook_endpoints", status="disabled") == 2

    # Claimed, decided, sealed: the backlogs read empty and the ages 0.
    async with db.transaction(pool) as conn:
        await conn.execute("UPDATE sagas SET status = 'completed' WHERE status <> 'completed'")
        await conn.execute(
            "UPDATE reviews SET status = 'approved', decided_at = now() WHERE status = 'pending'"
        )
        await conn.execute(
            "UPDATE audit_log SET seq = id, prev_hash = 'x', hash = 'y' WHERE seq IS NULL"
        )
    await gauges.refresh()
    s = scraped()
    assert value(s, "core_sagas_due") == 0
    assert value(s, "core_sagas_oldest_due_seconds") == 0
    assert value(s, "core_reviews_pending") == 0
    assert value(s, "core_reviews_oldest_pending_seconds") == 0
    assert value(s, "core_audit_unsealed_rows") == 0
    assert value(s, "core_audit_oldest_unsealed_seconds") == 0


async def test_open_ops_alerts_are_exported_by_code_and_severity(pool: db.Pool) -> None:
    """Open alerts counted by code and severity (a repeat is the same alert), with when one
    was last raised; once resolved the count reads 0 and the last-raised series goes away."""
    async with db.transaction(pool) as conn:
        for key in ("saga:1", "saga:2", "saga:2"):
            await alerts.raise_alert(
                conn, code="E_PARTIAL_COMMIT", severity="critical", message="m", dedup_key=key
            )
        await alerts.raise_alert(
            conn, code="E_WEBHOOK_FAILING", severity="warning", message="m", dedup_key="hook:1"
        )
        cur = await conn.execute("SELECT extract(epoch FROM now())::float8 AS now")
        now = (await cur.fetchone() or {})["now"]
    gauges = ScrapeGauges(
        BreakerRegistry(), database_backlog(pool), pool_stats=pool.get_stats, ttl=0
    )
    await gauges.refresh()
    s = scraped()
    critical = {"code": "E_PARTIAL_COMMIT", "severity": "critical"}
    warning = {"code": "E_WEBHOOK_FAILING", "severity": "warning"}
    assert value(s, "core_ops_alerts_open", **critical) == 2
    assert value(s, "core_ops_alerts_open", **warning) == 1
    raised = value(s, "core_ops_alerts_last_raised_timestamp_seconds", **critical)
    assert abs(raised - now) < 5

    async with db.transaction(pool) as conn:
        await db.execute(conn, "resolve_alerts", {"dedup_keys": ["hook:1"]})
    await gauges.refresh()
    s = scraped()
    assert value(s, "core_ops_alerts_open", **warning) == 0
    assert math.isnan(value(s, "core_ops_alerts_last_raised_timestamp_seconds", **warning))
    assert value(s, "core_ops_alerts_open", **critical) == 2


async def test_broker_connection_and_pool_use_are_read_at_each_scrape(pool: db.Pool) -> None:
    """core_mqtt_connected follows the gateway; the pool gauges count connections lent out
    (not the scrape's own), the pool's maximum and nobody waiting."""
    gateway = FakeGateway(connected=True)
    gauges = ScrapeGauges(
        BreakerRegistry(), database_backlog(pool), pool_stats=pool.get_stats, gateway=gateway, ttl=0
    )
    async with pool.connection():
        await gauges.refresh()
    s = scraped()
    assert value(s, "core_mqtt_connected") == 1
    assert value(s, "core_db_pool_in_use") == 1
    assert value(s, "core_db_pool_max") == pool.max_size == 10
    assert value(s, "core_db_pool_waiting") == 0

    gateway.connected = False
    await gauges.refresh()
    s = scraped()
    assert value(s, "core_mqtt_connected") == 0
    assert value(s, "core_db_pool_in_use") == 0
