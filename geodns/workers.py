"""`--workers N`: a supervisor layer around the server, not threads inside it.

N processes each run a whole `Server` on its own event loop and bind the same
addresses with SO_REUSEPORT, so the kernel spreads queries across them. Each
worker loads the config, polls the store and watches GeoIP itself, so health
snapshots and reloads reach all of them; SIGHUP to the supervisor is forwarded.
Metrics: worker 0 serves the metrics port; the others publish their counters
to `<state dir>/workers/` every second and worker 0 adds them up
(geodns.metrics explains why not prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import replace

from .server import Server, ServerSettings
from .settings import default_state_dir

log = logging.getLogger("geodns.workers")


def _worker(settings: ServerSettings, index: int) -> None:
    from .cli import run

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
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
    stopping = False
    restarts = 0

    def spawn(i: int) -> None:
        s = replace(base, worker=i, metrics=base.metrics if i == 0 else None)
        p = ctx.Process(target=_worker, args=(s, i), name=f"geodns-worker-{i}", daemon=False)
        p.start()
        procs[i] = p

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
    while not stopping:
        time.sleep(0.5)
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
                spawn(i)
    for p in procs.values():
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    return 0
