"""The soak in its compressed form: everything at once under chaos, then the checker.

``bench/soak.py --minutes 3 --compressed`` starts its own PostgreSQL and Mosquitto, an API
process and two worker processes, a simulated fleet and a webhook receiver; registers at
10/s while it kills Core processes with SIGKILL, stops the broker, crashes PostgreSQL, takes
a locker offline and fails the receiver; then drains and checks the whole history against
the final state (bench/README.md, "Soak"). It passes when the checker finds no violation,
every chaos kind ran, and the checker caught each violation planted in a copy of the history.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1200)
def test_a_compressed_soak_ends_with_no_violation(tmp_path: Path) -> None:
    report = tmp_path / "soak.md"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "soak.py"),
            "--minutes",
            "3",
            "--compressed",
            "--out",
            str(report),
        ],  # its own work dir: PostgreSQL runs there as another user, who cannot enter tmp_path
        capture_output=True,
        text=True,
        timeout=1100,
    )
    text = report.read_text() if report.exists() else ""
    tail = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, f"soak exit {run.returncode}\n{text[-4000:]}\n{tail}"
    assert "**0 violations**" in text, text[-4000:]
    assert "checker self-test: 8/8 planted kinds caught" in text
    for survived in ("kill -9 2/2", "broker restarts 1/1", "PostgreSQL restarts 1/1"):
        assert survived in text, text[-4000:]
