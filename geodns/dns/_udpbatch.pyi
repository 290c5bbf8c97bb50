# Type stub for the C extension geodns/dns/_udpbatch.c (see geodns.dns.udpbatch).
import socket
from collections.abc import Callable

MAX_BATCH: int
MAX_SLOT: int

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
        /,
    ) -> int: ...
