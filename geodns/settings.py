"""The server's settings, and defaults shared with the checker (state directory, store URL).

Only this module reads the environment, and only for these defaults: systemd's
StateDirectory= exports STATE_DIRECTORY; GEODNS_STORE overrides the store URL
so that several nodes can point at one PostgreSQL without editing units;
GEODNS_UDP_BATCH picks the UDP path (auto, native, python, off: see
geodns.dns.udpbatch), so a test run or a unit can force one.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from geodns.dns import hot, rrl

COOKIE_FILE_NAME = "cookie-secret"  # in the state directory, unless --cookie-secret-file

GEOIP_DIRS = (Path("/var/lib/GeoIP"), Path("/usr/share/GeoIP"), Path("/usr/local/share/GeoIP"))


def default_state_dir() -> Path:
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        # systemd may pass several colon-separated directories; the first is ours
        return Path(env.split(":")[0])
    return Path(".geodns-state")


def default_store_url(state_dir: Path | None = None) -> str:
    env = os.environ.get("GEODNS_STORE")
    if env:
        return env
    state = state_dir or default_state_dir()
    return f"sqlite:///{state.resolve() / 'health.sqlite'}"


def default_udp_batch() -> str:
    return os.environ.get("GEODNS_UDP_BATCH", "").strip().lower() or "auto"


@dataclass
class ServerSettings:
    """Everything the server is told, resolved once (by the CLI or a test)."""

    config_dir: Path
    listen: list[tuple[str, int]] = field(default_factory=lambda: [("127.0.0.1", 5353)])
    geoip_asn: Path | None = None
    geoip_city: Path | None = None
    geoip_dirs: tuple[Path, ...] | None = None
    state_dir: Path | None = None
    store_url: str | None = None  # None: default; "" disables health polling
    health_interval: float = 5.0
    quorum: int = 1  # regions that must call an address down (several regional checkers)
    region_timeout: float = 900.0  # a region silent this long loses its vote (0: never)
    geoip_interval: float = 60.0
    metrics: tuple[str, int] | None = None
    query_log: bool = False
    ecs_trust: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # empty = all
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1000
    tcp_max_per_source: int = 32  # per IPv4 address / IPv6 /64 (geodns.dns.tcpslots)
    # response rate limiting (geodns.dns.rrl); rate 0 = off
    rrl_rate: int = rrl.DEFAULT_RATE
    rrl_slip: int = rrl.DEFAULT_SLIP
    rrl_v4_prefix: int = rrl.DEFAULT_V4_PREFIX
    rrl_v6_prefix: int = rrl.DEFAULT_V6_PREFIX
    rrl_exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    rrl_max_buckets: int = rrl.DEFAULT_MAX_BUCKETS
    # DNS Cookies (geodns.dns.cookies); None: <state dir>/cookie-secret, made if absent
    cookies: bool = True
    cookie_secret_file: Path | None = None
    reuse_port: bool = False
    udp_batch: str = field(default_factory=default_udp_batch)  # geodns.dns.udpbatch.MODES
    # answers the batched UDP path replays for repeated queries (geodns.dns.hot); 0 = off
    hot_answers: int = hot.CAPACITY
    # --workers N: this process's index, and where workers share their counters
    worker: int = 0
    workers: int = 1
    stats_dir: Path | None = None
    # anycast: put these on `service_dev` while serving (geodns.runtime.service_addr)
    service_addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
    service_dev: str = "lo"
    service_drain: float = 1.0  # seconds between withdrawing and closing the sockets
    # keep the last health snapshot in the state directory
    # (geodns.runtime.health_snapshot); `explain` reads it but never writes
    persist_health: bool = True

    def resolved_state_dir(self) -> Path:
        return self.state_dir or default_state_dir()

    def resolved_cookie_secret_file(self) -> Path:
        return self.cookie_secret_file or self.resolved_state_dir() / COOKIE_FILE_NAME

    def resolved_store_url(self) -> str:
        if self.store_url is not None:
            return self.store_url
        return default_store_url(self.resolved_state_dir())
