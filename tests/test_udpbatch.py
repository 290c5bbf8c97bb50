"""The batched UDP engines (geodns.dns._udpbatch in C, geodns.dns.udpbatch.PyBatch):
the same datagrams in, the same replies, counters and errors out — tested on
both, on real loopback sockets (IPv4 and IPv6)."""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from geodns.dns import udpbatch

from .util import REPO

ENGINES = ["native", "python"]


def native_or_skip() -> None:
    """Skip without the C engine — but fail where it should have been built
    (Linux, gcc and the Python headers present): a silent fallback there
    would leave the native path untested."""
    if udpbatch.native_available():
        return
    why = f"geodns.dns._udpbatch is not built: {udpbatch.NATIVE_ERROR}"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if sys.platform.startswith("linux") and shutil.which("gcc") and headers.exists():
        pytest.fail(why + " (pip install -e . should have built it here)")
    pytest.skip(why)


@pytest.fixture(params=ENGINES)
def engine_path(request: pytest.FixtureRequest) -> str:
    if request.param == "native":
        native_or_skip()
    return str(request.param)


def _pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    srv = socket.socket(family, socket.SOCK_DGRAM)
    cli = socket.socket(family, socket.SOCK_DGRAM)
    for s in (srv, cli):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((host, 0))
    srv.setblocking(False)
    cli.settimeout(2)
    return srv, cli


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    srv, cli = _pair()
    yield srv, cli
    srv.close()
    cli.close()


def _send_all(cli: socket.socket, dst: tuple[str, int], packets: list[bytes]) -> None:
    for p in packets:
        cli.sendto(p, dst)
    time.sleep(0.05)  # loopback delivery is synchronous; a little slack for the scheduler


def _recv_all(cli: socket.socket, want: int, timeout: float = 2.0) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    cli.settimeout(0.2)
    while len(out) < want and time.monotonic() < deadline:
        try:
            out.append(cli.recv(65535))
        except TimeoutError:
            pass
    cli.settimeout(0.05)
    try:  # nothing more than expected
        while len(out) < want + 100:
            out.append(cli.recv(65535))
    except TimeoutError:
        pass
    return out


def _drain_all(
    engine: udpbatch.Engine,
    srv: socket.socket,
    handler: Callable[[bytes, str], bytes | None],
    limit: int = 256,
) -> int:
    """Drain until the socket is empty (as repeated readiness events would)."""
    total = 0
    for _ in range(10_000):
        n = engine.drain(srv, handler, None, limit)
        total += n
        if n == 0:
            return total
    raise AssertionError("drain never emptied the socket")


def echo(data: bytes, src: str) -> bytes:
    return b"R" + data


def test_a_burst_of_many_datagrams(engine_path: str, pair: tuple[socket.socket, ...]) -> None:
    srv, cli = pair
    engine = udpbatch.make_engine(engine_path, batch=16)
    seen: list[tuple[bytes, str]] = []

    def handler(data: bytes, src: str) -> bytes | None:
        seen.append((data, src))
        return echo(data, src)

    packets = [i.to_bytes(4, "big") * (1 + i % 50) for i in range(300)]
    _send_all(cli, srv.getsockname(), packets)
    assert _drain_all(engine, srv, handler) == 300
    assert [d for d, _ in seen] == packets  # every datagram once, in order
    assert {s for _, s in seen} == {"127.0.0.1"}
    replies = _recv_all(cli, 300)
    assert replies == [b"R" + p for p in packets]
    assert (engine.received, engine.replied, engine.send_errors) == (300, 300, 0)
    assert engine.truncated == engine.bad_source == 0
    if engine_path == "native":
        assert engine.recv_calls < 300 / 8  # many datagrams per system call
        assert engine.send_calls < 300 / 8
    else:
        assert engine.recv_calls == 300


def test_limit_bounds_one_drain(engine_path: str, pair: tuple[socket.socket, ...]) -> None:
    srv, cli = pair
    engine = udpbatch.make_engine(engine_path, batch=8)
    _send_all(cli, srv.getsockname(), [b"q%d" % i for i in range(50)])
    assert engine.drain(srv, echo, None, 20) == 20  # the loop gets its turn after 20
    assert engine.drain(srv, echo, None, 1000) == 30
    assert engine.drain(srv, echo, None, 1000) == 0  # empty: EAGAIN is not an error
    assert len(_recv_all(cli, 50)) == 50


def test_none_means_no_reply(engine_path: str, pair: tuple[socket.socket, ...]) -> None:
    srv, cli = pair
    engine = udpbatch.make_engine(engine_path)
    packets = [b"%d" % i for i in range(40)]
    _send_all(cli, srv.getsockname(), packets)
    _drain_all(engine, srv, lambda d, s: d if int(d) % 2 else None)
    assert sorted(_recv_all(cli, 20)) == sorted(p for p in packets if int(p) % 2)
    assert engine.replied == 20


def test_ipv6_source_and_reply(engine_path: str) -> None:
    try:
        srv, cli = _pair(socket.AF_INET6)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    with srv, cli:
        engine = udpbatch.make_engine(engine_path)
        seen: list[str] = []

        def handler(data: bytes, src: str) -> bytes:
            seen.append(src)
            return data[::-1]

        _send_all(cli, srv.getsockname(), [b"abc", b"defg"] * 40)
        assert _drain_all(engine, srv, handler) == 80
        assert set(seen) == {"::1"}  # as uvloop gives it: no port, no %scope
        assert sorted(_recv_all(cli, 80)) == sorted([b"cba", b"gfed"] * 40)


def test_zero_length_and_maximum_datagrams(
    engine_path: str, pair: tuple[socket.socket, ...]
) -> None:
    srv, cli = pair
    engine = udpbatch.make_engine(engine_path, batch=4)
    big = bytes(range(256)) * 255 + b"x" * 227  # 65507: the largest IPv4 UDP payload
    got: list[int] = []

    def handler(data: bytes, src: str) -> bytes:
        got.append(len(data))
        return data[:1] or b"empty"

    _send_all(cli, srv.getsockname(), [b"", big, b"", big])
    assert _drain_all(engine, srv, handler) == 4
    assert got == [0, len(big), 0, len(big)]
    assert big[:64] == bytes(range(64))
    assert sorted(_recv_all(cli, 4)) == sorted([b"empty", b"\x00", b"empty", b"\x00"])


def test_datagrams_longer_than_a_slot_are_dropped_and_counted(
    engine_path: str, pair: tuple[socket.socket, ...]
) -> None:
    srv, cli = pair
    engine = udpbatch.make_engine(engine_path, batch=8, slot=512)
    packets = [b"a" * 512, b"b" * 513, b"c" * 4000, b"d" * 12, b"e" * 511]
    seen: list[bytes] = []

    def handler(data: bytes, src: str) -> bytes:
        seen.append(data)
        return data[:1]

    _send_all(cli, srv.getsockname(), packets)
    assert _drain_all(engine, srv, handler) == 5
    assert seen == [packets[0], packets[3], packets[4]]  # never a cut-off datagram
    assert engine.truncated == 2
    assert sorted(_recv_all(cli, 3)) == [b"a", b"d", b"e"]


def test_a_reply_the_kernel_refuses_is_counted_and_the_rest_are_sent(
    engine_path: str, pair: tuple[socket.socket, ...]
) -> None:
    srv, cli = pair
    engine = udpbatch.make_engine(engine_path, batch=16)

    def handler(data: bytes, src: str) -> bytes:
        return b"x" * 70_000 if data == b"huge" else data  # over the UDP maximum: EMSGSIZE

    packets = [b"1", b"huge", b"2", b"3", b"huge", b"4"]
    _send_all(cli, srv.getsockname(), packets)
    assert _drain_all(engine, srv, handler) == 6
    assert sorted(_recv_all(cli, 4)) == [b"1", b"2", b"3", b"4"]
    assert (engine.replied, engine.send_errors) == (4, 2)


def test_a_failing_handler_does_not_cost_the_others_their_replies(
    engine_path: str, pair: tuple[socket.socket, ...]
) -> None:
    srv, cli = pair
    engine = udpbatch.make_engine(engine_path, batch=16)

    def handler(data: bytes, src: str) -> bytes:
        if data.startswith(b"bad"):
            raise KeyError(data)
        return data

    packets = [b"1", b"bad1", b"2", b"bad2", b"3"]
    _send_all(cli, srv.getsockname(), packets)
    with pytest.raises(KeyError) as exc:
        engine.drain(srv, handler, None, 100)
    assert exc.value.args == (b"bad1",)  # the first error; raised after the batch went out
    assert exc.value.__traceback__ is not None
    assert sorted(_recv_all(cli, 3)) == [b"1", b"2", b"3"]
    assert engine.drain(srv, handler, None, 100) == 0


def test_a_handler_returning_neither_bytes_nor_none(
    engine_path: str, pair: tuple[socket.socket, ...]
) -> None:
    srv, cli = pair
    engine = udpbatch.make_engine(engine_path)
    _send_all(cli, srv.getsockname(), [b"1", b"2"])
    with pytest.raises(TypeError, match="bytes or None"):
        engine.drain(srv, lambda d, s: bytearray(d) if d == b"1" else d, None, 100)  # type: ignore[arg-type, return-value]
    assert _recv_all(cli, 1) == [b"2"]


def test_observe_gets_one_in_sixteen(engine_path: str, pair: tuple[socket.socket, ...]) -> None:
    srv, cli = pair
    engine = udpbatch.make_engine(engine_path)
    timings: list[float] = []
    _send_all(cli, srv.getsockname(), [b"q"] * 160)
    total = 0
    while (n := engine.drain(srv, echo, timings.append, 1000)) > 0:
        total += n
    assert total == 160
    assert len(timings) == 10
    assert all(isinstance(t, float) and 0 <= t < 1 for t in timings)


def test_drain_is_not_reentrant(engine_path: str, pair: tuple[socket.socket, ...]) -> None:
    srv, cli = pair
    engine = udpbatch.make_engine(engine_path)
    inner: list[BaseException] = []

    def handler(data: bytes, src: str) -> bytes:
        try:
            engine.drain(srv, echo, None, 10)
        except RuntimeError as e:
            inner.append(e)
        return data

    _send_all(cli, srv.getsockname(), [b"a", b"b"])
    _drain_all(engine, srv, handler)
    assert len(inner) == 2 and "re-entrant" in str(inner[0])
    assert sorted(_recv_all(cli, 2)) == [b"a", b"b"]


def test_bad_arguments_are_errors_not_crashes(engine_path: str) -> None:
    with pytest.raises(ValueError):
        udpbatch.make_engine(engine_path, batch=0)
    with pytest.raises(ValueError):
        udpbatch.make_engine(engine_path, batch=100_000)
    with pytest.raises(ValueError):
        udpbatch.make_engine(engine_path, slot=8)
    with pytest.raises(ValueError):
        udpbatch.make_engine(engine_path, slot=70_000)
    engine = udpbatch.make_engine(engine_path)
    srv, cli = _pair()
    with srv, cli:
        with pytest.raises(ValueError):
            engine.drain(srv, echo, None, 0)
        if engine_path == "native":
            with pytest.raises(TypeError):
                engine.drain(srv, "not callable", None, 10)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                engine.drain(srv, echo, 42, 10)  # type: ignore[arg-type]
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.close()
    with pytest.raises((OSError, ValueError)):  # fileno() is -1
        engine.drain(closed, echo, None, 10)
    if engine_path == "native":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.setblocking(False)
            with pytest.raises(OSError):  # not connected: ENOTCONN, an error not a hang
                engine.drain(tcp.fileno(), echo, None, 10)


def test_no_reference_or_memory_leaks(engine_path: str, pair: tuple[socket.socket, ...]) -> None:
    """Thousands of datagrams through every outcome (reply, None, refused,
    error, wrong type, truncated): no reference or memory left behind."""
    srv, cli = pair
    engine = udpbatch.make_engine(engine_path, batch=32, slot=1024)
    reply = b"constant reply"
    too_big = b"y" * 70_000

    def handler(data: bytes, src: str) -> bytes | None:
        k = data[0] % 5
        if k == 0:
            return None
        if k == 1:
            return too_big
        if k == 2:
            raise ValueError("boom")
        return reply

    def observe(seconds: float) -> None:
        pass

    def rounds(n: int) -> None:
        for r in range(n):
            packets = [bytes([(r + i) % 256]) * (1 + i % 40) for i in range(64)]
            packets.append(b"z" * 2000)  # truncated at slot=1024
            _send_all_fast(cli, srv.getsockname(), packets)
            for _ in range(100):
                try:
                    if engine.drain(srv, handler, observe, 256) == 0:
                        break
                except ValueError:
                    pass
            _discard(cli)

    rounds(5)  # warm: caches, first allocations
    gc.collect()
    refs = (sys.getrefcount(reply), sys.getrefcount(too_big), sys.getrefcount(handler))
    refs_obs = sys.getrefcount(observe)
    tracemalloc.start()
    try:
        rounds(10)
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        rounds(100)  # 6,500 datagrams
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (sys.getrefcount(reply), sys.getrefcount(too_big), sys.getrefcount(handler)) == refs
    assert sys.getrefcount(observe) == refs_obs
    assert after - before < 64 * 1024, f"memory grew by {after - before} bytes"
    assert engine.received >= 115 * 65 - 50
    assert engine.truncated >= 100


def _send_all_fast(cli: socket.socket, dst: tuple[str, int], packets: list[bytes]) -> None:
    for p in packets:
        cli.sendto(p, dst)


def _discard(cli: socket.socket) -> None:
    cli.setblocking(False)
    try:
        while True:
            cli.recv(65535)
    except BlockingIOError:
        pass
    finally:
        cli.settimeout(2)


def test_the_source_string_cache_tells_addresses_apart(engine_path: str) -> None:
    """Many distinct sources (127.0.0.0/8) through one engine: each query sees
    its own address, whatever the cache held for another one."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.setblocking(False)
    clients = []
    try:
        for i in range(1, 40):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind((f"127.0.{i % 3}.{i}", 0))
            clients.append(c)
        engine = udpbatch.make_engine(engine_path)
        seen: list[tuple[bytes, str]] = []

        def handler(data: bytes, src: str) -> bytes:
            seen.append((data, src))
            return data

        for _ in range(3):
            for c in clients:
                c.sendto(c.getsockname()[0].encode(), srv.getsockname())
        time.sleep(0.05)
        _drain_all(engine, srv, handler)
        assert len(seen) == 3 * len(clients)
        assert all(data.decode() == src for data, src in seen)
    finally:
        srv.close()
        for c in clients:
            c.close()


def test_choose() -> None:
    assert udpbatch.choose("off") == "off"
    assert udpbatch.choose("python") == "python"
    assert udpbatch.choose("auto") == ("native" if udpbatch.native_available() else "off")
    with pytest.raises(ValueError):
        udpbatch.choose("fast")
    if udpbatch.native_available():
        assert udpbatch.choose("native") == "native"
    else:
        with pytest.raises(RuntimeError, match="not built"):
            udpbatch.choose("native")


def test_receive_buffer_is_sized_for_bursts() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = udpbatch.size_receive_buffer(s, 4 << 20)
        assert got == s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        try:
            with open("/proc/sys/net/core/rmem_max") as f:
                rmem_max = int(f.read())
        except OSError:
            rmem_max = 0
        if os.geteuid() == 0:  # SO_RCVBUFFORCE: past rmem_max
            assert got >= 8 << 20
        elif rmem_max:
            assert got >= min(8 << 20, 2 * rmem_max)


_ASAN_RUNNER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("geodns.dns._udpbatch", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules["geodns.dns._udpbatch"] = mod
import geodns.dns.udpbatch
assert geodns.dns.udpbatch._native is mod
import pytest
args = ["-p", "no:cacheprovider", "-q", "-x", "-k", "native and not sanitizers", *sys.argv[2:]]
sys.exit(pytest.main(args))
"""


def test_the_native_engine_under_address_and_undefined_behaviour_sanitizers(
    tmp_path: Path,
) -> None:
    """The C engine's and hot table's unit tests again, with the extension built with
    -fsanitize=address,undefined and Python's allocations going through
    malloc, so an out-of-bounds access or a use-after-free aborts the run."""
    if os.environ.get("GEODNS_SANITIZED_CHILD"):
        pytest.skip("already the sanitized run")
    gcc = shutil.which("gcc")
    libs = [_gcc_lib(gcc, "libasan.so"), _gcc_lib(gcc, "libubsan.so")] if gcc else []
    if gcc is None or not all(libs) or not sys.platform.startswith("linux"):
        pytest.skip("needs gcc with libasan and libubsan")
    so = tmp_path / "_udpbatch_asan.so"
    include = sysconfig.get_paths()["include"]
    build = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
         f"-I{include}", str(REPO / "geodns" / "dns" / "_udpbatch.c"),
         str(REPO / "geodns" / "dns" / "_hot.c"), "-o", str(so)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if build.returncode != 0:
        pytest.skip(f"no sanitizer build here: {build.stderr[-500:]}")
    env = {
        **os.environ,
        "LD_PRELOAD": ":".join(str(p) for p in libs),
        "PYTHONMALLOC": "malloc",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1",
        "GEODNS_SANITIZED_CHILD": "1",
    }
    r = subprocess.run(
        # the engine's tests and the hot table's (tests/test_hot.py)
        [
            sys.executable,
            "-c",
            _ASAN_RUNNER,
            str(so),
            str(Path(__file__)),
            str(Path(__file__).with_name("test_hot.py")),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]


def _gcc_lib(gcc: str, name: str) -> Path | None:
    out = subprocess.run(
        [gcc, f"-print-file-name={name}"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    p = Path(out)
    return p.resolve() if p.is_absolute() and p.exists() else None
