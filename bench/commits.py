"""Where a registration's commits go: every transaction PostgreSQL ran for a batch of
registrations, grouped by what it did, per asset.

    python bench/commits.py                      # 200 registrations at 20/s, instant lockers
    python bench/commits.py --count 400 --rate 50 --out bench/commits.txt

It starts the stack of bench/load.py (``proveniq serve`` and ``proveniq simulate`` on a fresh
database of ``--database-url``'s server, the broker at ``--mqtt-url`` or a private Mosquitto),
with ``log_statement = 'all'`` set on that database only, sends the registrations, waits
until every asset is verified or escalated, and reads the statements back from the server's
log (``--pg-log``, Debian's default path). Each transaction, a ``BEGIN … COMMIT`` or one
statement in autocommit, is named by its first statement; the table counts them per asset.
``pg_stat_database.xact_commit`` for the same database is printed beside the log's total as
a check (the log misses nothing the server counted, apart from the bench's own queries).
Logging every statement slows the server: this measures counts, never speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).parent))
import load  # bench/load.py: the stack, the drain, the header

LINE = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] \S+@(\S+) LOG:  (?:statement|execute [^:]*): (.*)$")


def shape(sql: str) -> str:
    """A statement's kind: its first words, literals and parameters dropped."""
    sql = re.sub(r"\s+", " ", sql).strip()
    sql = re.sub(r"'[^']*'|\$\d+|\b\d+\b", "?", sql)
    return sql[:90]


def transactions(log: Iterator[str], dbname: str) -> Counter[str]:
    """Committed transactions of ``dbname`` in ``log``, by their first statement's shape."""
    open_txn: dict[str, list[str]] = defaultdict(list)  # pid -> statements since BEGIN
    in_txn: set[str] = set()
    counts: Counter[str] = Counter()
    for line in log:
        m = LINE.match(line)
        if not m or m.group(2) != dbname:
            continue
        pid, sql = m.group(1), m.group(3).strip()
        word = sql.split(None, 1)[0].upper().rstrip(";") if sql else ""
        if word in ("BEGIN", "START"):
            in_txn.add(pid)
            open_txn[pid] = []
        elif word in ("COMMIT", "END"):
            if pid in in_txn:
                first = open_txn[pid][0] if open_txn[pid] else "(empty)"
                counts[f"txn: {shape(first)}"] += 1
            in_txn.discard(pid)
        elif word == "ROLLBACK":
            in_txn.discard(pid)
        elif pid in in_txn:
            open_txn[pid].append(sql)
        else:
            counts[f"auto: {shape(sql)}"] += 1
    return counts


@contextlib.contextmanager
def logged(server_url: str, name: str) -> Iterator[str]:
    """bench/load.py's fresh database, with every statement on it logged."""
    with original_database(server_url, name) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'")
        yield url


original_database = load.database
load.database = logged


async def register(st: load.Stack, count: int, rate: float) -> Counter[int]:
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(
        base_url=st.base, headers={"Authorization": f"Bearer {st.key}"}, timeout=60
    ) as http:

        async def one(i: int) -> None:
            body = {
                "name": f"Asset {i}",
                "category": "watch",
                "lockerRef": st.refs[i % len(st.refs)],
            }
            r = await http.post("/api/assets", json=body)
            statuses[r.status_code] += 1

        t0 = time.monotonic()
        tasks = []
        for i in range(count):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return statuses


async def amain(args: argparse.Namespace) -> None:
    offset = args.pg_log.stat().st_size
    async with load.stack(args, "commits", args.lockers, "instant", "proveniq_commits") as st:
        dbname = st.db_url.split("dbname=")[1].split()[0]
        before = load.ledger_state(st.db_url)["commits"]
        load.say(f"{args.count} registrations at {args.rate:g}/s")
        statuses = await register(st, args.count, args.rate)
        state, took = await load.drain(st.db_url, args.drain_timeout, "commits")
        await asyncio.sleep(args.settle)  # the outbox, audit sealing and reviews catch up
        state = load.ledger_state(st.db_url)
        counted = state["commits"] - before
    with args.pg_log.open(errors="replace") as f:
        f.seek(offset)
        counts = transactions(f, dbname)
    n = state["total"]
    load.record(f"Statuses {dict(statuses)}; ledger {state['assets']} (drained in {took:.0f} s)")
    load.record(
        f"Commits per asset: {sum(counts.values()) / n:.2f} in the statement log"
        f" ({sum(counts.values())} transactions), {counted / n:.2f} by pg_stat_database"
        f" ({counted}; it also counts the bench's own queries), {n} assets."
    )
    load.record()
    load.record("| per asset | count | first statement of the transaction |")
    load.record("| ---: | ---: | --- |")
    for kind, c in counts.most_common():
        if c / n >= args.min_per_asset:
            load.record(f"| {c / n:.2f} | {c} | `{kind}` |")
    rest = sum(c for c in counts.values() if c / n < args.min_per_asset)
    load.record(f"| {rest / n:.2f} | {rest} | (kinds under {args.min_per_asset:g} per asset) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200, help="registrations")
    ap.add_argument("--rate", type=float, default=20, help="registrations per second")
    ap.add_argument("--lockers", type=int, default=20)
    ap.add_argument("--settle", type=float, default=5, help="s to wait after the drain")
    ap.add_argument("--drain-timeout", type=float, default=120)
    ap.add_argument("--min-per-asset", type=float, default=0.02, help="rows shown at least")
    ap.add_argument(
        "--pg-log", type=Path, default=Path("/var/log/postgresql/postgresql-15-main.log")
    )
    ap.add_argument("--mqtt-url", default=None, help="default: a private Mosquitto")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--out", type=Path, help="also write the results here (markdown)")
    load.add_serve_options(ap)
    args = ap.parse_args()
    load.header(args)

    async def run() -> None:
        if args.mqtt_url is None:
            with load.private_broker() as broker:
                args.mqtt_url = broker.url
                await amain(args)
        else:
            await amain(args)

    asyncio.run(run())
    if args.out:
        args.out.write_text("\n".join(load.OUT) + "\n")


if __name__ == "__main__":
    main()
