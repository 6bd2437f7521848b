"""The soak in under a minute of load: ``bench/soak.py --compressed`` finds nothing wrong.

The script runs everything for real and privately (a PostgreSQL cluster and a Mosquitto it
restarts, ``serve --role api`` and two ``--role worker`` processes it kills with SIGKILL,
``proveniq simulate`` on the seed's latency profile with 1 % of commands dropped, a webhook
receiver that fails for a while); this test only reads what it reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


@pytest.mark.timeout(360)
def test_compressed_soak_survives_its_chaos_with_zero_violations(tmp_path: Path) -> None:
    """45 s at 10/s through kill -9 of Core processes, a broker restart, a PostgreSQL crash,
    an offline locker and a failing receiver: exit 0, every chaos event recovered from, every
    acknowledged registration in the ledger, and a checker that catches planted violations."""
    summary_path, text_path = tmp_path / "soak.json", tmp_path / "soak.txt"
    done = subprocess.run(
        [
            *(sys.executable, str(SOAK), "--minutes", "0.75", "--compressed"),
            *("--lockers", "20", "--json", str(summary_path), "--out", str(text_path)),
        ],
        capture_output=True,
        text=True,
        timeout=340,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["violations"] == {}
    for kind in ("kill", "broker", "postgres"):
        assert summary["chaos"][kind]["events"] >= 1, kind
        assert summary["chaos"][kind]["survived"] == summary["chaos"][kind]["events"], kind
    assert summary["acknowledged"] > 100
    assert summary["drained"] is True
    assert summary["final"]["auditVerify"].startswith("audit chain intact")
    planted = summary["final"]["selfTest"].split()[0]
    caught, total = (int(n) for n in planted.split("/"))
    assert caught == total >= 7  # the checker is not blind
    text = text_path.read_text()
    assert "**0 violations**" in text
    assert "chaos: kill -9" in text and "chaos: PostgreSQL crashed" in text
