"""The migrations build exactly the schema that ``sql/schema.sql`` declares."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from importlib import resources

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

# One row per schema object, in a form that does not depend on the server's version.
_CATALOG = """
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v')
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index ' || pg_get_indexdef(indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relnamespace = 'public'::regnamespace
UNION ALL
SELECT 'function ' || p.oid::regprocedure || ' ' || md5(pg_get_functiondef(p.oid))
FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace
UNION ALL
SELECT 'type ' || t.typname || ' ' || coalesce(
    (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
     FROM pg_enum e WHERE e.enumtypid = t.oid), '')
FROM pg_type t WHERE t.typnamespace = 'public'::regnamespace AND t.typtype = 'e'
UNION ALL
SELECT 'sequence ' || c.relname FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'
"""


def catalog(conninfo: str) -> set[str]:
    with psycopg.connect(conninfo) as conn:
        return {row[0] for row in conn.execute(_CATALOG)}


@pytest.fixture
def snapshot_db(pg_admin_url: str) -> Iterator[str]:
    """An empty database built from ``sql/schema.sql`` alone."""
    name = f"proveniq_s_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(pg_admin_url, dbname=name)
    try:
        sql = resources.files("proveniq_core.sql").joinpath("schema.sql").read_text("utf-8")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)  # a trusted file of our own
        yield url
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_migrations_build_the_declared_schema(database_url: str, snapshot_db: str) -> None:
    """A database migrated from scratch has the same tables, columns, constraints, indexes,
    functions, triggers and types as sql/schema.sql; regenerate it with
    scripts/schema-snapshot.sh after adding a migration."""
    migrated, declared = catalog(database_url), catalog(snapshot_db)
    assert len(migrated) > 100
    assert sorted(migrated - declared) == [], "in the migrations but not in schema.sql"
    assert sorted(declared - migrated) == [], "in schema.sql but not in the migrations"
