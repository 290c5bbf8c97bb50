"""`--workers N`: a supervisor layer around the server, not threads inside it.

N processes each run a whole `Server` on its own event loop and bind the same
addresses with SO_REUSEPORT, so the kernel spreads queries across them. Each
worker loads the config, polls the store and watches GeoIP itself, so health
snapshots and reloads reach all of them; SIGHUP to the supervisor is forwarded.
Metrics: worker 0 serves the metrics port; every worker publishes its counters
to `<state dir>/workers/` every second and worker 0 adds the others' to its
own (geodns.runtime.metrics explains why not prometheus-client's multiprocess mode).
Those files are also the workers' heartbeats: the supervisor tells systemd
READY=1 once every worker has published, pings systemd's watchdog itself, and
kills a worker whose heartbeat stopped for HANG_AFTER seconds (a wedged loop)
so that it is started again.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import replace

from geodns.runtime import sdnotify
from geodns.runtime.loop import run
from geodns.runtime.server import Server
from geodns.settings import ServerSettings, default_state_dir

log = logging.getLogger("geodns.workers")

HANG_AFTER = 10.0  # seconds without a heartbeat before a worker counts as wedged
START_WITHIN = 120.0  # seconds a new worker has to load its config and bind
_SD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _worker(settings: ServerSettings, index: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    for var in _SD_ENV:  # the supervisor speaks to systemd for everyone
        os.environ.pop(var, None)
    server = Server(settings)
    server.load_initial()
    log.info("worker %d (pid %d) serving", index, os.getpid())
    run(server.serve_forever())


def run_workers(settings: ServerSettings, n: int) -> int:
    ctx = mp.get_context("fork")
    stats_dir = (settings.state_dir or default_state_dir()) / "workers"
    stats_dir.mkdir(parents=True, exist_ok=True)
    for old in stats_dir.glob("worker-*.json"):
        old.unlink()  # a previous run's (perhaps with more workers)
    base = replace(settings, reuse_port=True, workers=n, stats_dir=stats_dir)
    procs: dict[int, mp.process.BaseProcess] = {}
    spawned: dict[int, float] = {}  # wall-clock spawn time (heartbeats are file mtimes)
    stopping = False
    restarts = 0

    def spawn(i: int) -> None:
        s = replace(base, worker=i, metrics=base.metrics if i == 0 else None)
        p = ctx.Process(target=_worker, args=(s, i), name=f"geodns-worker-{i}", daemon=False)
        spawned[i] = time.time()
        p.start()
        procs[i] = p

    def heartbeat(i: int) -> float | None:
        """The worker's last publish, if it published since it was spawned."""
        try:
            t = (stats_dir / f"worker-{i}.json").stat().st_mtime
        except OSError:
            return None
        return t if t >= spawned[i] - 1 else None  # (mtime granularity)

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for p in procs.values():
            if p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGTERM if sig == signal.SIGINT else sig)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for i in range(n):
        spawn(i)
    ready = False
    watchdog = sdnotify.watchdog_interval()
    pinged = 0.0
    while not stopping:
        time.sleep(0.5)
        now = time.time()
        beats = {i: heartbeat(i) for i in procs}
        if not ready and all(b is not None for b in beats.values()):
            ready = True
            sdnotify.notify("READY=1", f"STATUS={n} workers serving")
        for i, b in beats.items():
            p = procs[i]
            if not (p.is_alive() and p.pid):
                continue
            if b is not None and now - b > HANG_AFTER:
                log.error("worker %d (pid %d) silent for %.0f s: killing it", i, p.pid, now - b)
            elif b is None and now - spawned[i] > START_WITHIN:
                log.error(
                    "worker %d (pid %d) not serving after %.0f s: killing it",
                    i,
                    p.pid,
                    now - spawned[i],
                )
            else:
                continue
            os.kill(p.pid, signal.SIGKILL)
            p.join(timeout=5)
        if watchdog is not None and time.monotonic() - pinged >= watchdog:
            sdnotify.notify(
                "WATCHDOG=1"
            )  # the supervisor's own loop turns; workers are watched above
            pinged = time.monotonic()
        for i, p in list(procs.items()):
            if not p.is_alive() and not stopping:
                restarts += 1
                log.error(
                    "worker %d exited with %s; restarting (%d restarts so far)",
                    i,
                    p.exitcode,
                    restarts,
                )
                if restarts > 10 * n:
                    log.error("workers keep dying; giving up")
                    stopping = True
                    forward(signal.SIGTERM, None)
                    break
                time.sleep(min(restarts, 5))
                if stopping:  # told to stop while we waited: start nothing new
                    break
                spawn(i)
    sdnotify.notify("STOPPING=1")
    forward(signal.SIGTERM, None)  # again: a worker may have started after the first
    for p in procs.values():
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    return 0
