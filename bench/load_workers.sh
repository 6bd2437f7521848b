#!/usr/bin/env bash
# serve --workers N side by side: the single process against N worker processes, interleaved.
#
#   bash bench/load_workers.sh [ROUNDS] [WORKERS...]     e.g. bash bench/load_workers.sh 3 0 1 2
#   RATE=20 STEPS=30,40,50 bash bench/load_workers.sh 3  # lighter, for a busy machine
#
# Runs `bench/load.py --scenario instant --rate $RATE --duration 20 --steps $STEPS
# --step-duration 10` (RATE 60, STEPS 80,100,120 unless set) once per `--workers` value per
# round, in turn (0 1 2, 0 1 2, …), so that
# the machine's noise falls on every configuration alike. Prints one row per run, then the
# medians per configuration: the latency phase's throughput, p50/p99 and serve CPU (all its processes,
# and its API process alone), each step's p99, and the highest sustained step. The reports
# stay in $OUT (default: a temporary dir). PY: the Python with the bench extra.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift $(($# > 0 ? 1 : 0))
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(0 1 2)
py=${PY:-.venv-bench/bin/python}
rate=${RATE:-60}
steps=${STEPS:-80,100,120}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
echo "[workers] reports in $out" >&2

for n in $(seq "$rounds"); do
    for w in "${configs[@]}"; do
        echo "[workers] round $n, --workers $w" >&2
        "$py" bench/load.py --scenario instant --rate "$rate" --duration 20 --steps "$steps" \
            --step-duration 10 --workers "$w" --out "$out/w${w}_r${n}.md" > "$out/w${w}_r${n}.log" 2>&1 \
            || echo "[workers] round $n --workers $w failed: see $out/w${w}_r${n}.log" >&2
    done
done

"$py" - "$out" "$rate" "$steps" <<'EOF'
import re, statistics, sys
from pathlib import Path

def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]

rate, steps = sys.argv[2], sys.argv[3].split(",")
runs = {}
for report in sorted(Path(sys.argv[1]).glob("w*_r*.md")):
    w = int(re.match(r"w(\d+)_r", report.name)[1])
    text = report.read_text().splitlines()
    row = {}
    for i, line in enumerate(text):
        if line.startswith("### Latency"):
            c = cells(text[i + 4])
            cpu = c[12].split("/")[0]
            row["done"], row["p50"], row["p99"] = float(c[3]), float(c[4]), float(c[6])
            row["cpu"] = float(cpu.split("(")[0])
            row["api"] = float(m[1]) if (m := re.search(r"API (\d+)", cpu)) else row["cpu"]
        if re.match(rf"\| ({'|'.join(steps)}) \| 10 \|", line):
            c = cells(line)
            row[f"p99@{c[0]}"] = float(c[6])
        if m := re.match(r"Highest sustained rate: (\d+)", line):
            row["sustained"] = float(m[1])
    if "sustained" in row:
        runs.setdefault(w, []).append(row)
        print(f"--workers {w} {report.name}: " + ", ".join(f"{k} {v:g}" for k, v in row.items()))

keys = ["done", "p50", "p99", "cpu", "api", *(f"p99@{s}" for s in steps), "sustained"]
print(
    f"\n| --workers | runs | done/s of {rate}/s | {rate}/s p50 ms | {rate}/s p99 ms | serve CPU % at {rate}/s"
    " | its API process | " + " | ".join(f"p99 ms at {s}/s" for s in steps)
    + " | highest sustained /s |"
)
print("| ---: " * (len(keys) + 2) + "|")
for w, rows in sorted(runs.items()):
    med = []
    for k in keys:
        values = [r[k] for r in rows if k in r]  # a step the ramp stopped before: absent
        cell = f"{statistics.median(values):.0f}" if values else "–"
        med.append(cell if len(values) in (0, len(rows)) else f"{cell} ({len(values)} of {len(rows)})")
    print(f"| {w} | {len(rows)} | " + " | ".join(med) + " |")
EOF
