"""`geodns` command line: serve, validate, explain, geoip-demo, withdraw.

Arguments are turned into a `ServerSettings` in `options` and nowhere else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from geodns.cli.options import (
    _add_abuse,
    _add_geo_store,
    _hostport,
    _int_range,
    _interface,
    _network,
    settings_from_args,
)
from geodns.config.fields import duration_arg
from geodns.dns import hot
from geodns.errors import ConfigError

log = logging.getLogger("geodns")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="geodns", description="Geo-aware authoritative DNS for mirror networks"
    )
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the DNS server")
    _add_geo_store(s)
    s.add_argument(
        "--listen",
        "-l",
        type=_hostport,
        action="append",
        help="ADDRESS:PORT for UDP and TCP; repeatable (default 127.0.0.1:5353)",
    )
    s.add_argument(
        "--metrics",
        type=lambda t: _hostport(t, 9153),
        help="serve Prometheus /metrics and /healthz on ADDRESS:PORT (off by default)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the sockets with SO_REUSEPORT (default 1)",
    )
    s.add_argument("--query-log", action="store_true", help="log every query at info level")
    s.add_argument("--health-interval", type=float, default=5.0, help="seconds between store polls")
    s.add_argument(
        "--quorum",
        type=int,
        default=1,
        help="regional checkers that must agree an address is down (default 1)",
    )
    s.add_argument(
        "--region-timeout",
        type=duration_arg,
        default=900.0,
        help="ignore the votes of a region whose checker has been silent this long while "
        "another region is current; 0 = never (default 15m)",
    )
    s.add_argument(
        "--geoip-interval",
        type=float,
        default=60.0,
        help="seconds between checks for new GeoIP files",
    )
    s.add_argument(
        "--ecs-trust",
        type=_network,
        action="append",
        default=[],
        help="only use EDNS Client Subnet from these source networks (default: all)",
    )
    s.add_argument(
        "--service-address",
        type=_interface,
        action="append",
        default=[],
        help="anycast: ADDRESS[/PREFIX] put on --service-dev while serving and "
        "withdrawn first on stop (needs CAP_NET_ADMIN); repeatable",
    )
    s.add_argument("--service-dev", default="lo", help="device for --service-address (lo)")
    s.add_argument(
        "--service-drain",
        type=float,
        default=1.0,
        help="seconds to keep answering after withdrawing, before closing (1)",
    )
    s.add_argument(
        "--udp-batch",
        choices=["auto", "native", "python", "off"],
        default=None,
        help="UDP path: native (recvmmsg/sendmmsg bursts, C), python (the same in Python), "
        "off (asyncio endpoint); auto = native when built (default: $GEODNS_UDP_BATCH or auto)",
    )
    s.add_argument(
        "--hot-answers",
        type=_int_range(0, hot.MAX_CAPACITY),
        default=None,
        metavar="N",
        help="on the batched UDP paths, replay up to N answers for repeated queries without "
        "entering Python (default 65536; 0 = off): the table is per reload and health change",
    )
    s.add_argument("--tcp-idle-timeout", type=float, default=10.0)
    s.add_argument(
        "--tcp-max-connections",
        type=int,
        default=1000,
        help="open TCP connections at most; at the cap the longest-idle one is closed "
        "for a newcomer (default 1000)",
    )
    _add_abuse(s)

    v = sub.add_parser("validate", help="check zone and pool YAML; exit 1 on problems")
    v.add_argument("config", type=Path, nargs="?", default=Path("zones"))

    e = sub.add_parser("explain", help="show how a name is answered for a client")
    e.add_argument("name")
    e.add_argument("--client", required=True, help="ADDRESS or ADDRESS/PREFIX (as in ECS)")
    e.add_argument("--type", "-t", default="A", choices=["A", "AAAA"])
    e.add_argument("--json", action="store_true")
    _add_geo_store(e)

    w = sub.add_parser("withdraw", help="remove service addresses (for ExecStopPost=)")
    w.add_argument("--service-address", type=_interface, action="append", required=True)
    w.add_argument("--service-dev", default="lo")

    g = sub.add_parser(
        "geoip-demo", help="write demo GeoLite2-ASN/-City databases (MaxMind format)"
    )
    g.add_argument("outdir", type=Path)
    g.add_argument("--networks", type=Path, help="YAML list of networks (default: built-in demo)")

    from geodns.cli.dnssec import add_parser as add_dnssec_parser

    d = add_dnssec_parser(sub)
    for p in (s, v, e, g, w, d):
        # `geodns serve --log-level debug` reads as well as `geodns --log-level debug serve`
        p.add_argument(
            "--log-level",
            dest="sub_log_level",
            default=None,
            choices=["debug", "info", "warning", "error"],
            help=argparse.SUPPRESS,
        )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "sub_log_level", None) or args.log_level
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.cmd == "validate":
        return cmd_validate(args.config)
    if args.cmd == "serve":
        return cmd_serve(args)
    if args.cmd == "explain":
        from geodns.cli.explain import cmd_explain

        return cmd_explain(args)
    if args.cmd == "withdraw":
        from geodns.runtime.service_addr import ServiceAddressError, remove

        try:
            remove(args.service_address, args.service_dev)
        except (ServiceAddressError, OSError) as e:
            print(f"geodns withdraw: {e}", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "dnssec":
        from geodns.cli.dnssec import run as run_dnssec

        return run_dnssec(args)
    if args.cmd == "geoip-demo":
        from geodns.steering.mmdb_writer import geoip_demo_command

        return geoip_demo_command(str(args.outdir), str(args.networks) if args.networks else None)
    return 2


def cmd_validate(config: Path) -> int:
    from geodns.config import load_config

    try:
        cfg = load_config(config)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        print(f"{len(e.problems)} problem(s) found in {config}", file=sys.stderr)
        return 1
    mirrors = sum(len(p.mirrors) for p in cfg.pools.values())
    names = sum(len(z.rrsets) for z in cfg.zones)
    signed = sum(z.dnssec is not None for z in cfg.zones)
    print(
        f"{config}: OK — {len(cfg.zones)} zone(s)"
        + (f" ({signed} DNSSEC-signed)" if signed else "")
        + f", {names} record set(s), "
        f"{len(cfg.pools)} pool(s), {mirrors} mirror(s)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from geodns.runtime.loop import run
    from geodns.runtime.server import Server
    from geodns.runtime.workers import run_workers

    settings = settings_from_args(args)
    settings.state_dir = settings.resolved_state_dir()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if settings.cookies and settings.cookie_secret_file is None:
        # made once before any worker starts, so that every worker reads the same
        from geodns.dns.cookies import CookieSecretError, ensure_secret_file

        try:
            ensure_secret_file(settings.resolved_cookie_secret_file())
        except (CookieSecretError, OSError) as e:
            log.error("not starting: %s", e)
            return 1
    if args.workers > 1:
        return run_workers(settings, args.workers)
    server = Server(settings)
    try:
        server.load_initial()
    except ConfigError as e:
        for line in e.problems:
            log.error("%s", line)
        log.error("not starting: the configuration in %s is invalid", settings.config_dir)
        return 1
    run(server.serve_forever())
    return 0
