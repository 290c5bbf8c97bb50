"""Run a CPU-heavy, pure function in a forked child and get its result back.

Why not a thread: under CPython's GIL a CPU-bound thread starves the
I/O-bound event loop (the "convoy effect": every time the loop releases the
GIL for a recv/send, the parse thread keeps it for a whole switch interval),
and the benchmark saw answering collapse for seconds during a reload. A
forked child parses and compiles on the other core with the parent's code
and data already loaded; only the pickled result crosses back.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import signal
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ForkedError(Exception):
    pass


async def run_forked(fn: Callable[[], T], *, timeout: float = 120.0) -> T:
    """fn() in a child process; its exception (if picklable) is re-raised here."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: compute, pickle, leave without running any cleanup
        code = 0
        try:
            os.close(r)
            _step_aside()
            try:
                payload = pickle.dumps((True, fn()), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException as e:  # noqa: BLE001 — everything goes back to the parent
                try:
                    payload = pickle.dumps((False, e), protocol=pickle.HIGHEST_PROTOCOL)
                except Exception:  # noqa: BLE001
                    payload = pickle.dumps((False, ForkedError(f"{type(e).__name__}: {e}")))
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    loop = asyncio.get_running_loop()
    try:
        data = await asyncio.wait_for(loop.run_in_executor(None, _read_all, r), timeout)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        raise ForkedError(f"child did not finish within {timeout:.0f} s") from None
    finally:
        await loop.run_in_executor(None, _reap, pid)
    if not data:
        raise ForkedError("child exited without a result")
    was_enabled = gc.isenabled()
    gc.disable()  # unpickling a large graph would otherwise trigger full collections
    try:
        ok, value = pickle.loads(data)
    finally:
        if was_enabled:
            gc.enable()
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _step_aside() -> None:
    """Yield to the serving loop without starving: a mild nice (the loop keeps
    most of a shared CPU), and every CPU allowed, since the child inherits the
    server's pinning and the scheduler should be free to run it where there is
    room. (Moving it *away* from the server's CPU starved it behind a busy
    neighbour in the benchmark: a 20 s reload.)"""
    try:
        os.nice(int(os.environ.get("GEODNS_NICE", "5")))
    except OSError:
        pass
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except (OSError, AttributeError):
        pass


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    try:
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
