"""Argument types and the one place arguments become a `ServerSettings`
(shared by `serve` and `explain`, which loads a server the same way)."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from pathlib import Path

from geodns.dns import rrl
from geodns.settings import ServerSettings


def _hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    """`127.0.0.1:5353`, `[::1]:5353`, `::1` (port 53), `5353` (127.0.0.1)."""
    t = text.strip()
    try:
        if t.startswith("["):
            host, _, rest = t[1:].partition("]")
            port = int(rest.lstrip(":")) if rest else default_port
        elif t.count(":") == 1:
            host, p = t.split(":")
            port = int(p)
        elif t.isdigit():
            host, port = "127.0.0.1", int(t)
        else:
            host, port = t, default_port
        ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not ADDRESS:PORT (e.g. 127.0.0.1:5353 or [::1]:5353)"
        ) from None
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"port {port} out of range")
    return host, port


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a network like 10.0.0.0/8") from None


def _interface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """`192.0.2.53` (→ /32), `2001:db8::53/128`."""
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an address like 192.0.2.53/32") from None


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is out of range ({lo}..{hi})")
        return v

    return parse


def _add_abuse(s: argparse.ArgumentParser) -> None:
    """Response rate limiting, DNS Cookies and TCP slots (README: Abuse resistance)."""
    g = s.add_argument_group("abuse resistance")
    g.add_argument(
        "--rrl-rate",
        type=_int_range(0, 1_000_000),
        default=rrl.DEFAULT_RATE,
        help="UDP responses per second per client network and response kind "
        f"(0 = no rate limiting; default {rrl.DEFAULT_RATE})",
    )
    g.add_argument(
        "--rrl-slip",
        type=_int_range(0, 10),
        default=rrl.DEFAULT_SLIP,
        help="every Kth response over the rate is sent truncated (TC=1) so that real "
        "clients retry over TCP, the others are dropped; 0 = drop all "
        f"(default {rrl.DEFAULT_SLIP})",
    )
    g.add_argument(
        "--rrl-ipv4-prefix",
        type=_int_range(0, 32),
        default=rrl.DEFAULT_V4_PREFIX,
        help=f"IPv4 client network size for rate limiting (default /{rrl.DEFAULT_V4_PREFIX})",
    )
    g.add_argument(
        "--rrl-ipv6-prefix",
        type=_int_range(0, 128),
        default=rrl.DEFAULT_V6_PREFIX,
        help=f"IPv6 client network size for rate limiting (default /{rrl.DEFAULT_V6_PREFIX})",
    )
    g.add_argument(
        "--rrl-exempt",
        type=_network,
        action="append",
        default=[],
        help="never rate-limit answers to this network; repeatable",
    )
    g.add_argument(
        "--rrl-max-buckets",
        type=_int_range(1000, 100_000_000),
        default=rrl.DEFAULT_MAX_BUCKETS,
        help=f"rate-limit buckets kept at most (memory bound; default {rrl.DEFAULT_MAX_BUCKETS:,})",
    )
    g.add_argument(
        "--cookie-secret-file",
        type=Path,
        help="DNS Cookies (RFC 7873/9018): file with the 128-bit server secret as 32 hex digits "
        "(share it between the servers of one name); default: <state dir>/cookie-secret, "
        "generated when absent; re-read on SIGHUP",
    )
    g.add_argument(
        "--no-cookies",
        action="store_true",
        help="ignore DNS COOKIE options (answer as if they were unknown options)",
    )
    g.add_argument(
        "--tcp-max-per-source",
        type=_int_range(0, 1_000_000),
        default=32,
        help="TCP connections one IPv4 address or IPv6 /64 may hold; at the cap its "
        "longest-idle one is closed (0 = no per-source cap; default 32)",
    )


def _add_geo_store(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("zones"),
        help="zone and pool YAML directory (default: ./zones)",
    )
    p.add_argument("--geoip-asn", type=Path, help="ASN database (GeoLite2-ASN / GeoIP2-ISP)")
    p.add_argument("--geoip-city", type=Path, help="City or Country database")
    p.add_argument(
        "--geoip-dir",
        type=Path,
        action="append",
        help="where to look for GeoLite2-*.mmdb (default: /var/lib/GeoIP, "
        "/usr/share/GeoIP, /usr/local/share/GeoIP); repeatable",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="state directory (default: $STATE_DIRECTORY or ./.geodns-state)",
    )
    p.add_argument(
        "--store",
        help="health store URL (default: sqlite in the state directory; "
        "env GEODNS_STORE); 'none' to ignore health",
    )


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    store = None if args.store is None else ("" if args.store == "none" else args.store)
    settings = ServerSettings(
        config_dir=args.config,
        listen=getattr(args, "listen", None) or [("127.0.0.1", 5353)],
        geoip_asn=args.geoip_asn,
        geoip_city=args.geoip_city,
        geoip_dirs=tuple(args.geoip_dir) if args.geoip_dir else None,
        state_dir=args.state_dir,
        store_url=store,
        health_interval=getattr(args, "health_interval", 5.0),
        quorum=getattr(args, "quorum", 1),
        region_timeout=getattr(args, "region_timeout", 900.0),
        geoip_interval=getattr(args, "geoip_interval", 60.0),
        metrics=getattr(args, "metrics", None),
        query_log=getattr(args, "query_log", False),
        ecs_trust=tuple(getattr(args, "ecs_trust", ())),
        tcp_idle_timeout=getattr(args, "tcp_idle_timeout", 10.0),
        tcp_max_connections=getattr(args, "tcp_max_connections", 1000),
        service_addresses=tuple(getattr(args, "service_address", ())),
        service_dev=getattr(args, "service_dev", "lo"),
        service_drain=getattr(args, "service_drain", 1.0),
    )
    if getattr(args, "udp_batch", None):  # else the settings' default ($GEODNS_UDP_BATCH)
        settings.udp_batch = args.udp_batch
    if getattr(args, "hot_answers", None) is not None:
        settings.hot_answers = args.hot_answers
    if getattr(args, "rrl_rate", None) is None:
        # `explain` answers no query: no limiter, and no cookie secret made on disk
        settings.rrl_rate = 0
        settings.cookies = False
        return settings
    settings.tcp_max_per_source = args.tcp_max_per_source
    settings.rrl_rate = args.rrl_rate
    settings.rrl_slip = args.rrl_slip
    settings.rrl_v4_prefix = args.rrl_ipv4_prefix
    settings.rrl_v6_prefix = args.rrl_ipv6_prefix
    settings.rrl_exempt = tuple(args.rrl_exempt)
    settings.rrl_max_buckets = args.rrl_max_buckets
    settings.cookies = not args.no_cookies
    settings.cookie_secret_file = args.cookie_secret_file
    return settings
