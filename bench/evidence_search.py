"""The near-duplicate photo search, side by side: the band index (migration 0016) against the
scan of every hashed photo it replaced, on the same rows (docs/architecture.md §5).

    .venv-bench/bin/python bench/evidence_search.py          # 20 000 photos -> evidence_search.txt
    .venv-bench/bin/python bench/evidence_search.py --photos 2000 --out /tmp/e.md   # smoke run

It migrates a fresh database ``proveniq_search_<pid>`` on ``--database-url``'s server (dropped
at the end), drops the evidence table's foreign keys there so that rows can be bulk-loaded,
and loads ``--photos`` rows whose perceptual hashes are those of the simulator's evidence
photos (``evidence_photo`` of a random asset, hashed as the Verify worker hashes it). Then,
for ``--queries`` new photos, it times ``nearest_evidence`` (the index) and the old scan,
interleaved query by query, and checks that both agree on every photo within 8 bits. Also
reported: what the GIN index costs a write (the same rows inserted with and without it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import OUT, database, record, say  # bench/ is not a package

from proveniq_core import db
from proveniq_core.locker.simulator import evidence_photo
from proveniq_core.verify.analysis import inspect_photo

SCAN = """SELECT asset_id, tenant_id, bit_count((phash # %(phash)s)::bit(64))::integer AS distance
FROM evidence
WHERE phash IS NOT NULL AND asset_id <> %(asset_id)s
ORDER BY distance
LIMIT 1"""

INSERT = """INSERT INTO evidence (id, verification_id, asset_id, tenant_id, kind, sha256,
                      content_type, size_bytes, phash)
SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'acme', 'photo',
       encode(sha256(h::text::bytea), 'hex'), 'image/jpeg', 1, h
FROM unnest(%s::bigint[]) AS h"""


def phashes(n: int) -> list[int]:
    """The perceptual hashes (as bigint) of ``n`` evidence photos of random assets."""
    out = []
    started = time.monotonic()
    for i in range(n):
        photo = evidence_photo(str(uuid.uuid4()))
        facts = inspect_photo(photo, hashlib.sha256(photo).hexdigest())
        assert facts.phash is not None
        out.append(facts.phash)
        if (i + 1) % 5000 == 0:
            say(f"  hashed {i + 1}/{n} photos in {time.monotonic() - started:.0f} s")
    return out


def timed_insert(conn: psycopg.Connection, hashes: list[int]) -> float:
    started = time.perf_counter()
    with conn.transaction():
        for chunk in range(0, len(hashes), 1000):
            conn.execute(INSERT, [hashes[chunk : chunk + 1000]])
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--photos", type=int, default=20000, help="rows to search (20000)")
    ap.add_argument("--queries", type=int, default=200, help="searches of each kind (200)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".txt"))
    args = ap.parse_args()

    record(f"# bench/evidence_search.py — {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC")
    record()
    record(f"Command: python bench/evidence_search.py {' '.join(sys.argv[1:])}")
    say(f"hashing {args.photos + args.queries} simulator photos")
    stored = phashes(args.photos)
    asked = phashes(args.queries)
    # A tenth of the questions are near copies of a stored photo (1-8 bits flipped), so that
    # both searches have something to find.
    rng = random.Random(7)
    for i in range(0, len(asked), 10):
        h = rng.choice(stored) % (1 << 64)
        for b in rng.sample(range(64), rng.randint(1, 8)):
            h ^= 1 << b
        asked[i] = h - (1 << 64) if h >= 1 << 63 else h

    with database(args.database_url, f"proveniq_search_{os.getpid()}") as url:
        asyncio.run(db.migrate(url))
        with psycopg.connect(url, autocommit=True) as conn:
            for (name,) in conn.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = 'evidence'::regclass"
                " AND contype = 'f'"
            ).fetchall():
                conn.execute(f"ALTER TABLE evidence DROP CONSTRAINT {name}")
            with_index = timed_insert(conn, stored)
            conn.execute("TRUNCATE evidence")
            conn.execute("DROP INDEX evidence_phash_bands")
            without = timed_insert(conn, stored)
            conn.execute("TRUNCATE evidence")
            conn.execute(
                "CREATE INDEX evidence_phash_bands ON evidence USING gin (phash_bands(phash))"
                " WHERE phash IS NOT NULL"
            )
            timed_insert(conn, stored)
            conn.execute("VACUUM ANALYZE evidence")
            plan = conn.execute(
                "EXPLAIN " + db.queries["nearest_evidence"],
                {"phash": asked[1], "asset_id": uuid.uuid4(), "within": 8},
            ).fetchall()

            index_ms, scan_ms, found, disagree = [], [], 0, 0
            for h in asked:
                params = {"phash": h, "asset_id": uuid.uuid4(), "within": 8}
                t0 = time.perf_counter()
                near = conn.execute(db.queries["nearest_evidence"], params).fetchone()
                t1 = time.perf_counter()
                scanned = conn.execute(SCAN, params).fetchone()
                t2 = time.perf_counter()
                index_ms.append((t1 - t0) * 1000)
                scan_ms.append((t2 - t1) * 1000)
                within = scanned if scanned is not None and scanned[2] <= 8 else None
                found += near is not None
                disagree += (near and near[2]) != (within and within[2])

    n = len(asked)
    record(f"{args.photos} stored photos, {n} searches of each kind, interleaved.")
    record()
    record("| search | median ms | p95 ms |")
    record("| --- | ---: | ---: |")
    for name, ms in (("band index (nearest_evidence)", index_ms), ("scan of every photo", scan_ms)):
        p95 = sorted(ms)[int(0.95 * (len(ms) - 1))]
        record(f"| {name} | {statistics.median(ms):.2f} | {p95:.2f} |")
    ratio = statistics.median(scan_ms) / statistics.median(index_ms)
    record()
    record(f"The scan / the index, medians: {ratio:.1f}x.")
    record(
        f"Found within 8 bits: {found} of {n}; searches where the two disagree on the nearest"
        f" photo within 8 bits: {disagree} (must be 0)."
    )
    record(
        f"Loading the {args.photos} rows: {with_index * 1000 / args.photos:.3f} ms per row with"
        f" the index, {without * 1000 / args.photos:.3f} ms without (bulk insert, one transaction)."
    )
    record("Plan of nearest_evidence:")
    for (line,) in plan:
        record(f"    {line}")
    args.out.write_text("\n".join(OUT) + "\n")
    say(f"wrote {args.out}")
    if disagree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
