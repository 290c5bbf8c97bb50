"""systemd's notify protocol, spoken to a socket of our own: READY once the
server answers, RELOADING/READY around a reload, the watchdog while the loop
turns, STOPPING; with --workers the supervisor speaks for all and restarts a
wedged worker."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from geodns.runtime import sdnotify

from .conftest import TEST_ZONES
from .util import ServerProcess, free_port, query, serve_args, udp


class NotifySocket:
    """Collects what is sent to it in a thread, as systemd would: always read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.seen: list[str] = []
        self.done = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while not self.done.is_set():
            try:
                self.seen.append(self.sock.recv(4096).decode())
            except TimeoutError:
                pass

    def close(self) -> None:
        self.done.set()
        self.reader.join(5)
        self.sock.close()

    def wait_for(self, line: str, timeout: float = 15, after: int = 0) -> int:
        """Index of the first message at or after `after` holding `line`."""
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(list(self.seen)[after:], after):
                if line in msg.split("\n"):
                    return i
            if time.monotonic() > deadline:
                raise AssertionError(f"no {line!r} in {self.seen}")
            time.sleep(0.02)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify")
    yield ns
    ns.close()


def test_notify_and_watchdog_helpers(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.notify("READY=1")  # not under systemd: nothing, no error
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    assert sdnotify.notify("READY=1", "STATUS=x")
    assert notify_socket.wait_for("STATUS=x") == 0
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 15
    monkeypatch.setenv("WATCHDOG_PID", "1")  # another process's watchdog
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert sdnotify.watchdog_interval() is None


def test_server_says_ready_reloading_watchdog_stopping(
    tmp_path: Path, demo_geoip: tuple[Path, Path], notify_socket: NotifySocket
) -> None:
    port = free_port()
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"}
    args = serve_args(TEST_ZONES, port, demo_geoip, tmp_path / "state")
    with ServerProcess(args, port, tmp_path / "server.log", env) as sp:
        ready = notify_socket.wait_for("READY=1")
        assert "STATUS=serving generation 1, 0 mirror addresses down" in notify_socket.seen[ready]
        assert udp(query("mail.example.org"), ("127.0.0.1", port)).rcode() == 0
        notify_socket.wait_for("WATCHDOG=1", after=ready)
        sp.signal(signal.SIGHUP)
        reloading = notify_socket.wait_for("RELOADING=1")
        assert re.search(r"^MONOTONIC_USEC=\d+$", notify_socket.seen[reloading], re.M)
        notify_socket.wait_for("READY=1", after=reloading)
        sp.signal(signal.SIGSTOP)  # a wedged process: the pings stop
        try:
            time.sleep(0.3)
            n = len(notify_socket.seen)
            with pytest.raises(AssertionError):
                notify_socket.wait_for("WATCHDOG=1", timeout=0.6, after=n)
        finally:
            sp.signal(signal.SIGCONT)
        notify_socket.wait_for("WATCHDOG=1", after=len(notify_socket.seen))
        sp.signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1")


def test_supervisor_readies_once_all_workers_serve_and_restarts_a_wedged_one(
    tmp_path: Path, demo_geoip: tuple[Path, Path], notify_socket: NotifySocket
) -> None:
    port = free_port()
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"}
    args = serve_args(TEST_ZONES, port, demo_geoip, tmp_path / "state", "--workers", "2")
    with ServerProcess(args, port, tmp_path / "server.log", env) as sp:
        ready = notify_socket.wait_for("READY=1")
        assert sp.log().count("listening on") == 2  # both workers bound before READY
        assert notify_socket.seen[ready].endswith("STATUS=2 workers serving")
        assert sum("READY=1" in m for m in notify_socket.seen) == 1  # only the supervisor
        notify_socket.wait_for("WATCHDOG=1")
        pid = int(re.findall(r"worker 1 \(pid (\d+)\) serving", sp.log())[0])
        os.kill(pid, signal.SIGSTOP)  # wedge worker 1
        assert sp.wait_log(f"worker 1 (pid {pid}) silent for", timeout=20), sp.log()
        assert sp.wait_log("worker 1 exited with -9; restarting", timeout=5), sp.log()
        deadline = time.monotonic() + 20  # the new worker 1 serves
        while not re.search(rf"worker 1 \(pid (?!{pid}\))\d+\) serving", sp.log()):
            assert time.monotonic() < deadline, sp.log()
            time.sleep(0.05)
        for _ in range(20):  # whichever worker the kernel picks answers
            assert udp(query("mail.example.org"), ("127.0.0.1", port)).rcode() == 0


def test_a_reader_that_never_reads_cannot_stall_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as deaf:
        deaf.bind(str(tmp_path / "deaf"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "deaf"))
        t0 = time.monotonic()
        sent = [sdnotify.notify("WATCHDOG=1") for _ in range(200)]
        assert time.monotonic() - t0 < 2
        assert sent[0] and not sent[-1]  # the queue filled; later pings were dropped
