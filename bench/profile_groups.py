"""Group a py-spy raw profile of serve by what the time was spent on (bench/profile.txt).

    py-spy record -p <serve pid> -d 20 -r 100 --nonblocking -f raw -o /tmp/serve.raw
    python bench/profile_groups.py /tmp/serve.raw

Each stack counts once, under the first category whose test matches it (the order below),
then the most sampled leaf functions.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from pathlib import Path

Stack = list[str]


def _any(*parts: str) -> Callable[[Stack], bool]:
    return lambda stack: any(part in frame for frame in stack for part in parts)


CATEGORIES: list[tuple[str, Callable[[Stack], bool]]] = [
    ("idle: the event loop waiting (select)", lambda s: "select (selectors.py" in s[-1]),
    ("verification photos: decode and perceptual hash", _any("inspect_photo", "phash")),
    ("verification photos: writing the blob", _any("EvidenceStore.put")),
    ("verify worker, outside the photo work", _any("proveniq_core/verify")),
    ("saga engine and steps (their PostgreSQL calls included)", _any("proveniq_core/saga")),
    (
        "HTTP: uvicorn, middleware, FastAPI, the route",
        _any("uvicorn", "starlette", "fastapi", "proveniq_core/api"),
    ),
    ("MQTT client (paho, aiomqtt, the gateway)", _any("paho", "aiomqtt", "locker/gateway")),
    ("other PostgreSQL calls (psycopg)", _any("psycopg")),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path, help="py-spy's -f raw output")
    ap.add_argument("--leaves", type=int, default=25, help="leaf functions to list (25)")
    args = ap.parse_args()
    rows: list[tuple[Stack, int]] = []
    for line in args.raw.read_text().splitlines():
        if line.strip():
            stack, n = line.rsplit(" ", 1)
            rows.append((stack.split(";"), int(n)))
    total = sum(n for _, n in rows)
    groups: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for stack, n in rows:
        name = next((name for name, test in CATEGORIES if test(stack)), "other")
        groups[name] += n
        leaves[stack[-1]] += n
    print(f"{total} samples")
    for name, n in groups.most_common():
        print(f"{100 * n / total:5.1f} %  {name}")
    print()
    for leaf, n in leaves.most_common(args.leaves):
        print(f"{100 * n / total:5.1f} %  {leaf}")


if __name__ == "__main__":
    main()
