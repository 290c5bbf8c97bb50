"""Calibration anchor, not a DNS server: the fastest a Python uvloop UDP server can go here.

    python bench/prebuilt_server.py PORT

Answers every datagram on 127.0.0.1:PORT with one response built at start-up
(`dl.example.org A`, three addresses, ECS echo), copying only the query ID — no
parsing, no lookup. bench/dns_qps measures it with the steered ECS A mix to show
the ceiling that event loop + kernel put on any Python design on this machine
(the issue's "Python uvloop server answering a prebuilt response" anchor).
"""

from __future__ import annotations

import asyncio
import sys

import dns.edns
import dns.message
import dns.rrset
import uvloop


def prebuilt() -> bytes:
    q = dns.message.make_query(
        "dl.example.org",
        "A",
        use_edns=0,
        payload=1232,
        options=[dns.edns.ECSOption("81.2.69.0", 24, 24)],
    )
    r = dns.message.make_response(q)
    r.flags |= 0x0400  # AA
    r.answer.append(
        dns.rrset.from_text(
            "dl.example.org.", 60, "IN", "A", "198.18.1.10", "198.18.2.10", "198.18.3.10"
        )
    )
    return r.to_wire()[2:]  # everything after the ID


class Echo(asyncio.DatagramProtocol):
    def __init__(self, tail: bytes) -> None:
        self.tail = tail
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and len(data) >= 12:
            self.transport.sendto(data[:2] + self.tail, addr)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    tail = prebuilt()
    await loop.create_datagram_endpoint(lambda: Echo(tail), local_addr=("127.0.0.1", port))
    await asyncio.sleep(3600)  # bounded: the bench stops it long before


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
