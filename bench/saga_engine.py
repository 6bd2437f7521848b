"""Durable 4-step no-op saga: the proveniq engine vs DBOS Transact vs raw single-row commits.

    .venv-bench/bin/python bench/saga_engine.py [--quick] [--levels 1,10,50] [--count 1500]

What is measured, all against the same PostgreSQL server in the same run:

  proveniq  SagaEngine.run() of a saga of 4 no-op steps, every step checkpointed;
            pool of min(N, 20) connections for concurrency N (20: the service's default).
  dbos      an async @DBOS.workflow() awaiting 4 async no-op @DBOS.step()s, its system
            database on the same server; SQLAlchemy pool of that size + 2 (the two
            extra serve DBOS's own background threads).
  raw       one autocommit INSERT of one row per operation (the physical limit), through
            the same client stack as the engine: psycopg 3 async and the same pool size.

Each system runs at each concurrency level in a fresh subprocess: a short warm-up, then a
fixed number of operations driven by N asyncio tasks. Each level has several rounds with
the systems interleaved, so a noisy moment on the machine hits all of them; a row is the
round with the median rate, with the range over the rounds. Reported per row: throughput,
per-operation latency (p50/p99; the concurrency-1 row is the sequential latency) and
commits per operation: pg_stat_database.xact_commit of the system's own database.

  proveniq, raw  the steady state: read just before and after the timed operations, once
                 every pooled backend has flushed its counters (see Counter); one-time
                 costs of a connection (its start, preparing its statements) are left out.
  dbos           over the whole subprocess once its backends have exited, less the same
                 for a launch that runs no workflow; includes warm-up and background polling.

Every operation is verified afterwards by counting completed rows (sagas and their steps,
DBOS workflows and their step outputs, inserted rows).

Ratios at the highest level: proveniq / DBOS throughput (target >= 10x) and proveniq /
(raw commit rate / 5), the rate one commit per checkpoint would allow (the saga's start and
each step's end): only checkpoints of many sagas committed together pass it (target >= 100 %).

Each system gets its own database on the server (dropped and re-created on every run):
proveniq_bench, proveniq_bench_dbos, proveniq_bench_raw. Needs the bench venv, which has
the dbos package (see bench/README.md). The result is written to bench/saga_engine.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from proveniq_core import db, logs
from proveniq_core.config import Settings
from proveniq_core.saga import SagaDefinition, SagaEngine, Step, StepContext

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SYSTEMS = ("proveniq", "dbos", "raw")
DATABASES = {
    "proveniq": "proveniq_bench",
    "dbos": "proveniq_bench_dbos",
    "raw": "proveniq_bench_raw",
}
STEPS = 4
CHECKPOINTS = STEPS + 1  # the saga's start and each step's end: one commit each, unbatched
POOL_MAX: int = Settings.model_fields["pool_max"].default  # the service's default pool
RESULT_MARK = "BENCH-RESULT "
HERE = Path(__file__).resolve().parent

Op = Callable[[int], Awaitable[None]]


@dataclass(slots=True)
class Measurement:
    """What one worker subprocess reports for one system at one concurrency level."""

    system: str
    level: int
    ops: int
    warmup: int
    seconds: float
    p50_ms: float
    p99_ms: float
    commits: int | None = None  # counted by the worker over the timed operations only


@dataclass(slots=True)
class Row:
    """One line of the table: a measurement plus the commits the server counted for it;
    ``low``/``high`` are the slowest and fastest rates over the rounds."""

    m: Measurement
    commits_per_op: float
    low: float = 0.0
    high: float = 0.0

    @property
    def rate(self) -> float:
        return self.m.ops / self.m.seconds


# -- helpers ----------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def warmup_count(level: int) -> int:
    return max(50, 8 * level)


async def drive(op: Op, level: int, first: int, count: int) -> tuple[float, list[float]]:
    """Run ``op(first) … op(first + count - 1)`` on ``level`` tasks; return seconds, latencies."""
    numbers = iter(range(first, first + count))
    latencies: list[float] = []

    async def worker() -> None:
        for n in numbers:
            started = time.perf_counter()
            await op(n)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(level):
                group.create_task(worker())
    except* Exception as failed:  # the others are alike: show one
        raise first_error(failed) from None
    return time.perf_counter() - started, latencies


def first_error(group: BaseExceptionGroup[Exception]) -> Exception:
    error = group.exceptions[0]
    return first_error(error) if isinstance(error, BaseExceptionGroup) else error


async def measure(
    system: str, op: Op, level: int, count: int, warmup: int, counter: Counter | None = None
) -> Measurement:
    """Warm up, then time ``count`` operations; with ``counter``, count their commits."""
    await drive(op, level, 0, warmup)
    before = await counter.read() if counter else 0
    seconds, latencies = await drive(op, level, warmup, count)
    commits = await counter.read() - before - level if counter else None
    return Measurement(
        system,
        level,
        count,
        warmup,
        seconds,
        pct(latencies, 50) * 1000 if latencies else 0.0,
        pct(latencies, 99) * 1000 if latencies else 0.0,
        commits,
    )


@dataclass(slots=True)
class Counter:
    """Reads ``xact_commit`` of the pool's database, flushed. A backend reports its counters
    when it goes idle, at most once a second (else up to ~10 s later), so every pooled
    connection (``size`` of them, all held at once) runs one statement that makes it report:
    ``pg_stat_force_next_flush()`` (PostgreSQL 15+), or any statement after a 1.1 s wait.
    Each read thus adds ``size`` commits of its own. Read from the admin database."""

    pool: db.Pool
    size: int
    admin_url: str
    database: str
    force: bool = True

    async def read(self) -> int:
        if not self.force:
            await asyncio.sleep(1.1)
        statement = "SELECT pg_stat_force_next_flush()" if self.force else "SELECT 1"
        async with contextlib.AsyncExitStack() as stack:
            held = [
                await stack.enter_async_context(self.pool.connection()) for _ in range(self.size)
            ]
            for conn in held:
                await conn.execute(statement)
        async with await psycopg.AsyncConnection.connect(self.admin_url, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.database,)
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0


# -- workers (one system, one level, in a subprocess) -----------------------------------------


async def noop(ctx: StepContext) -> dict[str, Any]:
    return {}


BENCH4 = SagaDefinition("bench4", tuple(Step(f"s{i}", noop) for i in range(STEPS)))


def pool_size(level: int) -> int:
    """Connections for ``level`` concurrent operations: as many, up to the service's default
    pool (``PROVENIQ_POOL_MAX``): a deployment does not open a backend per request."""
    return min(level, POOL_MAX)


async def open_counted_pool(url: str, admin_url: str, level: int) -> tuple[db.Pool, Counter]:
    size = pool_size(level)
    pool = await db.open_pool(url, min_size=size, max_size=size)
    await pool.wait()
    async with pool.connection() as conn:
        version = conn.info.server_version
    return pool, Counter(pool, size, admin_url, urlsplit(url).path.lstrip("/"), version >= 150000)


async def run_proveniq(
    url: str, admin_url: str, level: int, count: int, warmup: int
) -> Measurement:
    logs.configure("warning")
    pool, counter = await open_counted_pool(url, admin_url, level)
    engine = SagaEngine(pool, owner="bench")

    async def op(n: int) -> None:
        result = await engine.run(BENCH4, {"n": n})
        if not result.ok:
            raise RuntimeError(f"saga {result.saga_id} ended {result.status}: {result.error!r}")

    try:
        return await measure("proveniq", op, level, count, warmup, counter)
    finally:
        await pool.close()


async def run_raw(url: str, admin_url: str, level: int, count: int, warmup: int) -> Measurement:
    pool, counter = await open_counted_pool(url, admin_url, level)

    async def op(n: int) -> None:
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO bench_raw (id, payload) VALUES (%s, %s)",
                (uuid.uuid4(), db.jsonb({"n": n})),
            )

    try:
        return await measure("raw", op, level, count, warmup, counter)
    finally:
        await pool.close()


def dbos_workflow() -> Callable[[int], Awaitable[int]]:
    """Register the DBOS workflow (decorators must run before ``DBOS.launch()``)."""
    from dbos import DBOS

    @DBOS.step()
    async def noop_step(n: int) -> None:
        return None

    @DBOS.workflow()
    async def bench_workflow(n: int) -> int:
        for _ in range(STEPS):
            await noop_step(n)
        return n

    return bench_workflow


async def run_dbos(url: str, admin_url: str, level: int, count: int, warmup: int) -> Measurement:
    from dbos import DBOS

    workflow = dbos_workflow()
    DBOS(
        config={
            "name": "proveniq-bench",
            "system_database_url": url,
            "sys_db_pool_size": pool_size(level) + 2,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()

    async def op(n: int) -> None:
        if await workflow(n) != n:
            raise RuntimeError(f"workflow {n} returned a wrong result")

    try:
        return await measure("dbos", op, level, count, warmup)
    finally:
        DBOS.destroy()


WORKERS = {"proveniq": run_proveniq, "dbos": run_dbos, "raw": run_raw}


def worker_main(args: argparse.Namespace) -> None:
    run = WORKERS[args.worker]
    warmup = warmup_count(args.level) if args.count else 0
    admin_url = args.admin_url or with_database(args.database_url, "postgres")
    m = asyncio.run(run(args.database_url, admin_url, args.level, args.count, warmup))
    print(RESULT_MARK + json.dumps(asdict(m)), flush=True)


def spawn(system: str, admin_url: str, level: int, count: int) -> Measurement:
    url = with_database(admin_url, DATABASES[system])
    cmd = [sys.executable, __file__, "--worker", system, "--database-url", url]
    cmd += ["--admin-url", admin_url]
    cmd += ["--level", str(level), "--count", str(count)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the {system} worker at concurrency {level} failed (its error is above)")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return Measurement(**json.loads(line.removeprefix(RESULT_MARK)))
    raise RuntimeError(f"{system} worker printed no result:\n{done.stdout}")


# -- the server: databases, commit counters, verification -------------------------------------


def admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def recreate_databases(url: str) -> None:
    with admin(url) as conn:
        for name in DATABASES.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    with admin(with_database(url, DATABASES["raw"])) as conn:
        conn.execute("CREATE TABLE bench_raw (id uuid PRIMARY KEY, payload jsonb NOT NULL)")
    asyncio.run(db.migrate(with_database(url, DATABASES["proveniq"])))


def settled_commits(url: str, name: str, timeout: float = 15.0) -> int:
    """``xact_commit`` of database ``name`` once no backend is connected to it and the figure
    no longer moves: a backend flushes its counters when it exits (otherwise up to ~10 s
    late), so waiting for the exits makes the figure exact."""
    deadline = time.monotonic() + timeout
    last = -1
    with admin(url) as conn:
        while True:
            busy = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchone()
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)
            ).fetchone()
            value = int(row[0]) if row else 0
            if (busy and busy[0] == 0 and value == last) or time.monotonic() > deadline:
                return value
            last = value
            time.sleep(0.25)


def count_rows(url: str, sql: str) -> tuple[int, ...]:
    with admin(url) as conn:
        row = conn.execute(sql).fetchone()
    return tuple(int(v) for v in row) if row else ()


VERIFY = {
    "proveniq": (
        "SELECT (SELECT count(*) FROM sagas WHERE status = 'completed'),"
        " (SELECT count(*) FROM saga_steps WHERE status = 'completed')"
    ),
    "dbos": (
        "SELECT (SELECT count(*) FROM dbos.workflow_status"
        "        WHERE status = 'SUCCESS' AND name LIKE '%bench_workflow'),"
        " (SELECT count(*) FROM dbos.operation_outputs)"
    ),
    "raw": "SELECT count(*), count(*) FROM bench_raw",
}


def verify(url: str, system: str, total_ops: int) -> None:
    """Every operation so far completed and left its checkpoints (STEPS per saga)."""
    found = count_rows(url, VERIFY[system])
    per_op = 1 if system == "raw" else STEPS
    if found != (total_ops, per_op * total_ops):
        raise RuntimeError(f"{system}: expected {total_ops} done operations, found {found}")


# -- the run ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Plan:
    url: str
    levels: list[int]
    systems: list[str]
    rounds: int
    counts: dict[str, int]  # operations per system, level and round


def median_row(rows: list[Row]) -> Row:
    """The round with the median rate, with the range over all rounds."""
    ordered = sorted(rows, key=lambda r: r.rate)
    middle = ordered[(len(ordered) - 1) // 2]
    return Row(middle.m, middle.commits_per_op, ordered[0].rate, ordered[-1].rate)


def run_one(plan: Plan, system: str, level: int, baseline: int, done: dict[str, int]) -> Row:
    name = DATABASES[system]
    before = settled_commits(plan.url, name)
    m = spawn(system, plan.url, level, plan.counts[system])
    whole = settled_commits(plan.url, name) - before
    done[system] += m.ops + m.warmup
    verify(with_database(plan.url, name), system, done[system])
    if m.commits is not None:
        return Row(m, m.commits / m.ops)
    # DBOS: the whole subprocess, less an idle launch; warm-up included
    return Row(m, (whole - baseline) / (m.ops + m.warmup))


def dbos_baseline(plan: Plan) -> int:
    """Commits of a DBOS launch + destroy with no workflow (migrations done by a first one)."""
    name = DATABASES["dbos"]
    spawn("dbos", plan.url, 1, 0)
    before = settled_commits(plan.url, name)
    spawn("dbos", plan.url, 1, 0)
    return settled_commits(plan.url, name) - before


def run_all(plan: Plan) -> list[Row]:
    recreate_databases(plan.url)
    baseline = dbos_baseline(plan) if "dbos" in plan.systems else 0
    done = dict.fromkeys(SYSTEMS, 0)
    print(f"round {HEADER}", flush=True)
    table: list[Row] = []
    for level in plan.levels:
        rounds: dict[str, list[Row]] = {system: [] for system in plan.systems}
        for n in range(plan.rounds):  # interleaved, so a noisy moment hits every system
            for system in plan.systems:
                row = run_one(plan, system, level, baseline, done)
                print(f"{n + 1:>5} {format_row(row)}", flush=True)
                rounds[system].append(row)
        table += [median_row(rounds[system]) for system in plan.systems]
    return table


# -- the report -------------------------------------------------------------------------------

HEADER = (
    f"{'system':<9} {'conc':>4} {'ops':>6} {'seconds':>8} {'ops/s':>8} {'range':>12}"
    f" {'p50 ms':>7} {'p99 ms':>7} {'commits/op':>10}"
)


def format_row(row: Row) -> str:
    m = row.m
    spread = f"{row.low:.0f}–{row.high:.0f}" if row.low != row.high else ""
    return (
        f"{m.system:<9} {m.level:>4} {m.ops:>6} {m.seconds:>8.2f} {row.rate:>8.0f} {spread:>12}"
        f" {m.p50_ms:>7.2f} {m.p99_ms:>7.2f} {row.commits_per_op:>10.2f}"
    )


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def environment(url: str) -> list[str]:
    with admin(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"date        {now}",
        f"python      {platform.python_version()}  psycopg {version('psycopg')}"
        f"  psycopg-pool {version('psycopg-pool')}  dbos {version('dbos')}",
        f"postgresql  {row[0] if row else '?'}  (fsync and synchronous_commit as configured)",
        f"cpu         {os.cpu_count()} × {cpu}",
    ]


def find(rows: list[Row], system: str, level: int) -> Row | None:
    return next((r for r in rows if r.m.system == system and r.m.level == level), None)


def ratios(rows: list[Row], level: int) -> list[str]:
    ours, dbos, raw = (find(rows, s, level) for s in SYSTEMS)
    if ours is None:
        return []
    lines = [f"Ratios at concurrency {level}:"]
    if dbos is not None:
        x = ours.rate / dbos.rate
        verdict = "met" if x >= 10 else "MISSED"
        lines.append(
            f"  proveniq ÷ DBOS throughput                    {x:6.1f}×  (target ≥ 10×, {verdict})"
        )
    if raw is not None:
        ceiling = raw.rate / CHECKPOINTS
        share = ours.rate / ceiling
        verdict = "met" if share >= 1 else "MISSED"
        lines.append(
            f"  proveniq ÷ (raw commits/s ÷ {CHECKPOINTS} checkpoints)     {share:6.0%}"
            f"   (target ≥ 100 %, {verdict}; {raw.rate:.0f} ÷ {CHECKPOINTS} = {ceiling:.0f}"
            f" sagas/s; proveniq commits {ours.commits_per_op:.2f} per saga)"
        )
    return lines


def report(plan: Plan, env: list[str], rows: list[Row]) -> str:
    lines = [
        f"Durable {STEPS}-step no-op saga, every step checkpointed in PostgreSQL",
        *env,
        f"runs        {plan.rounds} round(s) per level, systems interleaved; per round"
        f" {plan.counts['proveniq']} sagas, {plan.counts['dbos']} DBOS workflows,"
        f" {plan.counts['raw']} raw commits",
        "",
        HEADER,
        *(format_row(r) for r in rows),
        "",
        "Each row is the round with the median rate; range: slowest–fastest round. conc:",
        f"concurrent asyncio tasks; pool min(conc, {POOL_MAX}) (DBOS: + 2), after a warm-up of",
        "max(50, 8 × conc) operations. The concurrency-1 rows are the sequential latencies.",
        "commits/op: pg_stat_database.xact_commit of the system's own database; proveniq and",
        "raw over the timed operations (steady state), DBOS over its whole process less an",
        "idle launch (so including warm-up and background polling).",
        "",
        *ratios(rows, max(plan.levels)),
    ]
    return "\n".join(lines) + "\n"


# -- command line -----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--database-url",
        default=os.environ.get("PROVENIQ_BENCH_URL", DEFAULT_URL),
        help="the server (any database on it; the bench creates its own). Default: %(default)s",
    )
    ap.add_argument("--levels", default="1,10,50", help="concurrency levels (default %(default)s)")
    ap.add_argument(
        "--count",
        type=int,
        help="proveniq sagas per level and round (default 1500, quick 200);"
        " with --worker: operations (default 1000)",
    )
    ap.add_argument(
        "--dbos-count", type=int, help="DBOS workflows per level and round (default 400, quick 100)"
    )
    ap.add_argument(
        "--raw-count", type=int, help="raw commits per level and round (default 15000, quick 2000)"
    )
    ap.add_argument("--rounds", type=int, help="rounds per level (default 3, quick 1)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="subset of %(default)s")
    ap.add_argument(
        "--quick", action="store_true", help="small counts, one round; writes no result file"
    )
    ap.add_argument(
        "--output", type=Path, help="result file (default bench/saga_engine.txt, not on --quick)"
    )
    ap.add_argument(
        "--worker",
        choices=SYSTEMS,
        help="internal: run one system at --level in this process against the database of"
        " --database-url (prepared by a full run) and print its figures; useful under py-spy",
    )
    ap.add_argument("--level", type=int, default=1, help="with --worker: concurrency")
    ap.add_argument(
        "--admin-url", help="with --worker: where pg_stat_database is read (default: postgres)"
    )
    return ap.parse_args()


def plan_from(args: argparse.Namespace) -> Plan:
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        sys.exit(f"unknown systems: {', '.join(sorted(unknown))}")
    if "dbos" in systems and version("dbos") == "-":
        sys.exit("the dbos package is missing: run with the bench venv (see bench/README.md)")
    levels = [int(v) for v in args.levels.split(",") if v]
    if max(levels) > 50:
        sys.exit("levels above 50 exceed the pool sizes this bench is meant for")
    quick = args.quick
    counts = {
        "proveniq": args.count or (200 if quick else 1500),
        "dbos": args.dbos_count or (100 if quick else 400),
        "raw": args.raw_count or (2000 if quick else 15000),
    }
    rounds = args.rounds or (1 if quick else 3)
    return Plan(args.database_url, levels, systems, rounds, counts)


def main() -> None:
    args = parse_args()
    logs.configure("warning")
    if args.worker:
        args.count = 1000 if args.count is None else args.count
        worker_main(args)
        return
    plan = plan_from(args)
    env = environment(plan.url)
    print("\n".join(env), flush=True)
    text = report(plan, env, run_all(plan))
    print("\n" + text, end="")
    output = args.output or (None if args.quick else HERE / "saga_engine.txt")
    if output is not None:
        output.write_text(text, encoding="utf-8")
        print(f"written to {output}")


if __name__ == "__main__":
    main()
