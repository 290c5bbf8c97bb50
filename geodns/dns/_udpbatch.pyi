# Type stub for the C extension geodns/dns/_udpbatch.c + _hot.c (see
# geodns.dns.udpbatch and geodns.dns.hot).
import socket
from collections.abc import Callable

from geodns.dns.rrl import RateLimiter

MAX_BATCH: int
MAX_SLOT: int
HOT_MAX_QUERY: int
HOT_MAX_REPLY: int

class Hot:
    hits: int
    misses: int
    deferred: int
    puts: int
    evicted: int
    capacity: int
    def __init__(self, capacity: int = 65536, limiter: RateLimiter | None = None) -> None: ...
    def put(
        self,
        key: bytes,
        variants: tuple[bytes, ...],
        opt: bytes,
        stat: int = 0,
        kind: int | None = None,
        start: int = 0,
    ) -> None: ...
    def take(self) -> list[tuple[int, int, int]]: ...
    def clear(self) -> None: ...
    def keys(self) -> list[bytes]: ...
    def answer(self, data: bytes, src: str, /) -> bytes | None: ...
    def __len__(self) -> int: ...

class Batch:
    batch: int
    slot: int
    received: int
    replied: int
    send_errors: int
    truncated: int
    bad_source: int
    recv_calls: int
    send_calls: int
    def __init__(self, batch: int = 64, slot: int = 65536) -> None: ...
    def drain(
        self,
        sock: socket.socket | int,
        handler: Callable[[bytes, str], bytes | None],
        observe: Callable[[float], None] | None = None,
        limit: int = 256,
        hot: Hot | None = None,
        /,
    ) -> int: ...
