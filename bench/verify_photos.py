"""The verify worker's photo work per job, before and after it took one thread hop.

A job here is what ``VerifyWorker._handle`` and ``analyze`` do with the photos of one
evidence reply once it is parsed: build each ``Photo``, inspect it (decode, grey-level
spread, perceptual hash), store its blob, and compare its digest with the device's claim.

- old: each photo's SHA-256 computed three times (``Photo.sha256`` was a property,
  ``inspect_photo`` and ``EvidenceStore.put`` hashed again), one ``asyncio.to_thread`` for
  each photo's inspection and one for each photo's ``put``, and ``put`` checking the target
  with ``Path.exists``, calling ``mkdir`` every time and writing through ``os.fdopen``;
  reimplemented below as it was.
- new: the digest computed once when the ``Photo`` is built, and ``inspect_and_store``
  (every photo's inspection and blob) in one ``asyncio.to_thread``.

Photos come from the locker simulator's generator (``evidence_photo``), one per asset as
the simulator answers, each a distinct asset's, so that every job writes a new blob; each
variant and round writes into its own new directory. Jobs run one at a time on one event
loop. Rounds alternate which variant goes first; the report gives the median over all jobs
of each variant of the wall time per job, and the CPU per job (user + system of the whole
process, threads included) as the median over rounds.

    .venv/bin/python bench/verify_photos.py                  # 8 rounds x 500 jobs (~20 s)
    .venv/bin/python bench/verify_photos.py --rounds 2 --jobs 100
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from proveniq_core.locker.simulator import evidence_photo
from proveniq_core.verify.analysis import Photo, PhotoFacts, inspect_photo
from proveniq_core.verify.evidence import EvidenceStore
from proveniq_core.verify.worker import inspect_and_store

HERE = Path(__file__).resolve().parent
CONTENT_TYPE = "image/jpeg"

Job = Callable[[Path, list[tuple[str, bytes]]], Awaitable[list[PhotoFacts]]]


@dataclass(frozen=True, slots=True)
class OldPhoto:
    claimed_sha256: str
    content_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def old_put(root: Path, data: bytes) -> str:
    """``EvidenceStore.put`` as it was."""
    digest = hashlib.sha256(data).hexdigest()
    target = root / digest[:2] / digest[2:]
    if target.exists():
        return digest
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


async def old_job(root: Path, raw: list[tuple[str, bytes]]) -> list[PhotoFacts]:
    photos = [OldPhoto(claimed, CONTENT_TYPE, data) for claimed, data in raw]
    facts = [await asyncio.to_thread(inspect_photo, p.data) for p in photos]
    for photo in photos:
        await asyncio.to_thread(old_put, root, photo.data)
    assert all(p.sha256 == p.claimed_sha256 for p in photos)  # analyze's photo_hash_matches
    return facts


async def new_job(root: Path, raw: list[tuple[str, bytes]]) -> list[PhotoFacts]:
    photos = [Photo(claimed, CONTENT_TYPE, data) for claimed, data in raw]
    facts = await asyncio.to_thread(inspect_and_store, EvidenceStore(root), photos)
    assert all(p.sha256 == p.claimed_sha256 for p in photos)
    return facts


async def run_round(job: Job, root: Path, jobs: list[list[tuple[str, bytes]]]) -> list[float]:
    """Wall seconds of each job, then the process CPU seconds of the whole round appended."""
    walls = []
    cpu0 = time.process_time()
    for raw in jobs:
        t0 = time.perf_counter()
        await job(root, raw)
        walls.append(time.perf_counter() - t0)
    walls.append(time.process_time() - cpu0)
    return walls


def revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain", "--", "../src"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + (" + work tree changes" if dirty.stdout.strip() else "")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
    parser.add_argument("--jobs", type=int, default=500, help="jobs per round (default 500)")
    parser.add_argument("--photos", type=int, default=1, help="photos per job (default 1)")
    parser.add_argument("--dir", type=Path, default=None, help="where blobs go (a temp dir)")
    args = parser.parse_args()

    jobs = [
        [
            (hashlib.sha256(data).hexdigest(), data)
            for data in (evidence_photo(f"asset-{j}-{k}") for k in range(args.photos))
        ]
        for j in range(args.jobs)
    ]
    sizes = [len(data) for raw in jobs for _, data in raw]
    variants: dict[str, Job] = {"old": old_job, "new": new_job}
    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="verify-photos-") as tmp:
        base = Path(tmp)
        # Both give the same facts and store the same files.
        expected = [inspect_photo(data) for _, data in jobs[0]]
        for name, job in variants.items():
            assert await job(base / f"check-{name}", jobs[0]) == expected
            for digest, data in jobs[0]:
                assert (base / f"check-{name}" / digest[:2] / digest[2:]).read_bytes() == data
        for name, job in variants.items():  # warm-up: imports, thread pool, caches
            await run_round(job, base / f"warm-{name}", jobs[: min(50, len(jobs))])
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                result = await run_round(variants[name], base / f"{name}-{r}", jobs)
                walls[name].extend(result[:-1])
                cpus[name].append(result[-1] / len(jobs))

    def us(seconds: float) -> str:
        return f"{seconds * 1e6:.0f}"

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# bench/verify_photos.py, {now}, revision {revision()}")
    print(
        f"# {args.rounds} interleaved rounds x {args.jobs} jobs per variant, "
        f"{args.photos} photo(s) per job, evidence_photo JPEGs of "
        f"{min(sizes)}-{max(sizes)} bytes (median {statistics.median(sizes):.0f}), "
        f"{os.cpu_count()} cores, blobs on {args.dir or tempfile.gettempdir()}"
    )
    print()
    print("| variant | wall µs/job p50 | p90 | CPU µs/job (median round) |")
    print("| --- | ---: | ---: | ---: |")
    for name in variants:
        w = sorted(walls[name])
        p90 = w[int(0.9 * (len(w) - 1))]
        print(
            f"| {name} | {us(statistics.median(w))} | {us(p90)} "
            f"| {us(statistics.median(cpus[name]))} |"
        )
    wall_ratio = statistics.median(walls["new"]) / statistics.median(walls["old"])
    cpu_ratio = statistics.median(cpus["new"]) / statistics.median(cpus["old"])
    print()
    print(f"new / old: wall p50 x{wall_ratio:.2f}, CPU x{cpu_ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
