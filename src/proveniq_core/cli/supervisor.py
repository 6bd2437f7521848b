"""``serve --workers N``: the API process starts N ``serve --role worker`` processes, restarts
one that dies, and stops them before it stops.

Each worker is ``python -m proveniq_core serve --role worker`` in a process group of its own
(a Ctrl-C in the terminal reaches the API process alone, which then stops the workers in
order). It gets the database and broker URLs, credentials included, in its environment,
never on its command line (which any user of the machine can read). Its ``/metrics``,
``/healthz`` and ``/readyz`` socket is bound here, once, and inherited: the port is known
before the worker starts, a taken one fails ``serve`` before anything starts, and a
restarted worker listens on the same address. A worker watches its parent's pid and stops
when the parent is gone (``watch_parent``), so a ``kill -9`` of the API process leaves no
worker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

DEFAULT_MAX = 3
"""The most worker processes ``serve`` starts by itself (``--workers`` sets any number): with
the API process, four pools of at most ``PROVENIQ_POOL_MAX`` + 1 connections (84 at the
default 20), within the embedded PostgreSQL's ``max_connections`` of 100."""
STOP_GRACE = 10.0
"""Seconds a worker has to stop after SIGTERM before it is killed."""
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
"""Seconds before a worker that died is started again: doubling from the first to the max."""
STEADY = 60.0
"""A worker that ran this long before dying is restarted after ``BACKOFF_FIRST`` again."""
READY_LINE = "worker ready"
"""What a worker prints on stdout once it serves (``serve`` prints it; we wait for it)."""
PARENT_POLL = 0.5
"""How often a worker looks whether its parent is still there, seconds."""


def cores() -> int:
    """The cores this process may run on (its CPU affinity, where the platform says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(n_cores: int) -> int:
    """One worker process per core beyond two, at most ``DEFAULT_MAX``: 0 on 2 cores.

    One core for the API process, one for what shares the machine with it (PostgreSQL, the
    broker: the embedded default runs them here too). Split in two processes, Core spent
    about a fifth more CPU per registration than in one (``bench/README.md``, "serve
    --workers"), which pays off only where a core would otherwise stay idle.
    """
    return max(0, min(DEFAULT_MAX, n_cores - 2))


def watch_parent(parent: int) -> None:
    """Stop this process (SIGTERM: a clean stop) when its parent ``parent`` is gone, and
    exit outright if that stop takes longer than ``STOP_GRACE``."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        log.warning("parent_gone", parent_pid=parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STOP_GRACE)
        log.error("parent_gone_stop_timed_out", parent_pid=parent)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@dataclass
class Worker:
    """One worker process slot: its socket and address, and the process now in it."""

    index: int
    sock: socket.socket
    url: str
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    starts: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


@dataclass
class Workers:
    """N worker processes kept running until ``stop``.

    ``argv``: the worker's command line before ``--listen-fd`` and the rest; ``env``: its
    environment (the URLs with their credentials).
    """

    argv: Sequence[str]
    env: dict[str, str]
    slots: list[Worker]
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _keepers: list[asyncio.Task[None]] = field(default_factory=list)
    _stop_task: asyncio.Task[None] | None = None

    @staticmethod
    def argv_for(*options: str) -> list[str]:
        """``python -m proveniq_core serve --role worker --workers 0 OPTIONS``."""
        return [
            *(sys.executable, "-m", "proveniq_core", "serve"),
            *("--role", "worker", "--workers", "0"),
            *options,
        ]

    def start(self) -> None:
        for slot in self.slots:
            self._keepers.append(asyncio.create_task(self._keep(slot), name=f"worker-{slot.index}"))

    def status(self) -> tuple[int, int]:
        """How many workers are up (started and ready, not exited since), of how many."""
        up = sum(
            1 for s in self.slots if s.ready and s.proc is not None and s.proc.returncode is None
        )
        return up, len(self.slots)

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until every worker is up, ``stop`` was called or ``timeout`` s passed."""
        deadline = time.monotonic() + timeout
        while self.status()[0] < len(self.slots) and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return self.status()[0] == len(self.slots)

    def stop(self) -> asyncio.Task[None]:
        """Stop every worker: SIGTERM, up to ``STOP_GRACE`` s, then SIGKILL (idempotent)."""
        if self._stop_task is None:
            self._stopping.set()
            self._changed.set()
            self._stop_task = asyncio.create_task(self._stop(), name="workers-stop")
        return self._stop_task

    async def _stop(self) -> None:
        for slot in self.slots:
            _terminate(slot.proc)  # a worker starting meanwhile is stopped by its keeper
        if self._keepers:
            _, late = await asyncio.wait(self._keepers, timeout=STOP_GRACE)
            if late:
                for slot in self.slots:
                    if slot.proc is not None and slot.proc.returncode is None:
                        log.warning("worker_process_killed", pid=slot.proc.pid, after_s=STOP_GRACE)
                        with contextlib.suppress(ProcessLookupError):
                            slot.proc.kill()
                await asyncio.wait(late)
        for slot in self.slots:
            slot.sock.close()

    async def _keep(self, slot: Worker) -> None:
        """Run the worker in ``slot``; start it again after a back-off when it dies."""
        delay = BACKOFF_FIRST
        fd = slot.sock.fileno()
        while not self._stopping.is_set():
            started = time.monotonic()
            slot.ready = False
            slot.starts += 1
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    "--listen-fd",
                    str(fd),
                    "--parent-pid",
                    str(os.getpid()),
                    "--worker-index",
                    str(slot.index),
                    env=self.env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    pass_fds=(fd,),
                    start_new_session=True,  # Ctrl-C reaches us only: we stop the workers
                )
            except OSError as exc:  # out of processes or file descriptors: try again later
                log.error("worker_process_not_started", worker=slot.index, error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            slot.proc = proc
            if self._stopping.is_set():  # stop() came while it started: it missed this one
                _terminate(proc)
            log.info("worker_process_started", worker=slot.index, pid=proc.pid, url=slot.url)
            assert proc.stdout is not None
            async for raw in proc.stdout:  # until the worker exits (or closes its stdout)
                if READY_LINE in raw.decode(errors="replace") and not slot.ready:
                    slot.ready = True
                    self._changed.set()
                    log.info("worker_process_ready", worker=slot.index, pid=proc.pid)
            code = await proc.wait()
            slot.ready = False
            self._changed.set()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= STEADY:
                delay = BACKOFF_FIRST
            log.warning(
                "worker_process_exited",
                worker=slot.index,
                pid=proc.pid,
                returncode=code,
                restart_in_s=delay,
                ran_s=round(time.monotonic() - started, 1),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, BACKOFF_MAX)


def _terminate(proc: asyncio.subprocess.Process | None) -> None:
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
