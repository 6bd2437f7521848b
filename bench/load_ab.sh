#!/usr/bin/env bash
# Side by side: the working tree against an earlier revision, interleaved, same machine.
#
#   bash bench/load_ab.sh REV [RATE] [ROUNDS]      e.g. bash bench/load_ab.sh HEAD~3 30 3
#
# Checks REV out into a temporary worktree with its own venv, then alternates
# `bench/load.py --scenario instant` latency phases (RATE/s for 30 s, 50 instant lockers)
# between REV and the working tree, ROUNDS times each. Prints one row per run and the
# medians: serve CPU per registration (psutil), p50 and p99 latency. A rate well below
# saturation keeps the CPU figure a cost per request rather than a queueing effect.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/load_ab.sh REV [RATE] [ROUNDS]}
rate=${2:-30}
rounds=${3:-3}
here=$PWD
tmp=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$tmp/base" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT

git worktree add -q --detach "$tmp/base" "$rev"
echo "[ab] installing $rev ($(git rev-parse --short "$rev")) into $tmp/base/.venv …" >&2
python3 -m venv "$tmp/base/.venv"
"$tmp/base/.venv/bin/pip" install -q -e "$tmp/base" aiohttp psutil >/dev/null 2>&1
[ -x .venv-bench/bin/python ] || {
    echo "no .venv-bench here: python3 -m venv .venv-bench && .venv-bench/bin/pip install -e '.[bench]'" >&2
    exit 2
}

run() {  # run NAME DIR N VENV
    local out="$tmp/$1_$3.md"
    # this tree's load.py drives the `proveniq` of the venv that runs it
    (cd "$2" && "$4/bin/python" "$here/bench/load.py" --scenario instant --rate "$rate" \
        --duration 30 --steps "$rate" --step-duration 5 --out "$out" >/dev/null 2>&1)
    # the latency phase's row: | rate | s | requests | done/s | p50 | p95 | p99 | max | Core-added | lag | in flight | statuses | CPU … |
    # and the whole run's commits per asset, from the ledger line after the ramp
    local commits
    commits=$(grep -o 'all sources): [0-9]* = [0-9.]* per asset' "$out" | tail -1 | awk '{print $5}')
    grep -A4 '^### Latency' "$out" | tail -1 | awk -F'|' -v name="$1" -v rate="$rate" -v commits="${commits:-nan}" '{
        split($14, cpu, "/"); gsub(/ /, "", cpu[1]); gsub(/ /, "", cpu[2]);
        printf "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%s\n", name, cpu[1] * 10 / rate, cpu[2] * 10 / rate, $6, $8, commits }'
}

echo -e "build\tserve CPU ms/registration\tPostgreSQL CPU ms/registration\tp50 ms\tp99 ms\tcommits/asset"
results=()
for n in $(seq "$rounds"); do
    for side in base new; do
        if [ $side = base ]; then dir="$tmp/base"; venv="$tmp/base/.venv"; else dir="$here"; venv="$here/.venv-bench"; fi
        row=$(run "$side" "$dir" "$n" "$venv")
        echo "$row"
        results+=("$row")
    done
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [line.split("\t") for line in sys.stdin.read().splitlines()]
med = {s: [statistics.median(float(r[i]) for r in rows if r[0] == s) for i in (1, 2, 3, 4, 5)]
       for s in ("base", "new")}
for s, values in med.items():
    print(f"median {s}\t" + "\t".join(f"{v:.1f}" for v in values))
new, base = med["new"], med["base"]
print("new/base\t" + "\t".join(f"{n / b:.2f}" for n, b in zip(new, base)))
'
