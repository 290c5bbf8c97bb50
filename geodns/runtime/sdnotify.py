"""systemd's notify protocol: READY/RELOADING/STOPPING and the watchdog.

With `Type=notify` systemd counts the server started only once it answers,
and with `WatchdogSec=` it kills (and restarts) a server whose event loop
stopped turning — for anycast the important case, since a wedged process
would otherwise keep its service address announced (ExecStopPost withdraws
it). The protocol is one datagram to $NOTIFY_SOCKET, so a few lines here
rather than a dependency (systemd-python needs libsystemd headers to build;
the `sdnotify` package has no watchdog helpers and no abstract sockets).
Everything is a no-op outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("geodns.sdnotify")


def notify(*lines: str) -> bool:
    """Send `KEY=value` lines; False when not under systemd or on failure."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.setblocking(False)  # a slow reader must never stall the DNS loop
            s.connect(path)
            s.send("\n".join(lines).encode())
        return True
    except BlockingIOError:
        log.debug("sd_notify queue full at %s; dropped %s", path, lines[0])
        return False
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", path, e)
        return False


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None when the
    watchdog is off or meant for another process (WATCHDOG_PID)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        return None
    return seconds / 2 if seconds > 0 else None


def reloading() -> bool:
    # systemd ≥ 253 wants the monotonic time with RELOADING=1 (Type=notify-reload)
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
