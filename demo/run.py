"""`geodns-demo`: the whole loop on one machine, on embedded defaults.

1. writes demo GeoIP databases (real MaxMind format) into the state directory;
2. starts every mirror of the example pools as a real HTTPS server on its
   loopback address and URL port (certificates from a throw-away CA), one of
   them deliberately stale;
3. runs checker rounds into SQLite until the states settle (`fall` rounds);
4. starts the DNS server on 127.0.0.1:5353 with that store;
5. asks the server for two client subnets, prints the answers next to
   ready-to-paste dig/kdig lines, and confirms the stale mirror is never handed out;
6. serves the status page (`checker web`) on http://127.0.0.1:8080/;
7. keeps running (a checker round every 30 s) until Ctrl-C, then stops everything.

It lives in the checker package because it drives both halves; `geodns`
itself never imports `checker`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import shutil
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import dns.edns
import dns.message
import dns.query

from checker import report
from checker.scheduler import run_once
from checker.web.app import StatusServer
from checker.web.data import StatusSource
from demo.mirror import DemoMirror, DemoPKI, Faults
from demo.tree import Tree
from geodns.config import load_config
from geodns.model import Config
from geodns.runtime.server import Server
from geodns.settings import ServerSettings
from geodns.steering.mmdb_writer import write_databases
from geodns.store import Store

STALE = "mirror-fr"  # the example pool's deliberately broken mirror
CLIENTS = (
    ("192.0.2.0/24", "Berlin, DE"),
    ("198.51.100.0/24", "New York, US"),
    ("203.0.113.0/24", "Osaka, JP"),
    ("2001:db8:3::/48", "São Paulo, BR"),
)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="geodns-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path("zones"), help="zone/pool YAML (./zones)")
    ap.add_argument("--state-dir", type=Path, default=Path(".geodns-state/demo"))
    ap.add_argument("--port", type=int, default=5353, help="DNS port on 127.0.0.1 and ::1")
    ap.add_argument("--metrics-port", type=int, default=9153)
    ap.add_argument("--web-port", type=int, default=8080, help="status page on 127.0.0.1")
    ap.add_argument("--once", action="store_true", help="set up, check the answers, stop")
    return ap


def main(argv: list[str] | None = None) -> int:
    import logging

    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop

        return uvloop.run(demo(args))
    except KeyboardInterrupt:
        return 130


async def demo(args: argparse.Namespace) -> int:
    state = args.state_dir.resolve()
    if state.exists():
        shutil.rmtree(state)  # a fresh demo every time: no stale store from last run
    state.mkdir(parents=True)
    config = load_config(args.config)
    asn, city = write_databases(state / "geoip")
    say(f"GeoIP   demo databases written to {state / 'geoip'}")
    pki = DemoPKI()
    mirrors: list[DemoMirror] = []
    stack = contextlib.AsyncExitStack()
    server: Server | None = None
    try:
        for pool in config.pools.values():
            tree = Tree.generate(50)
            for m in pool.mirrors:
                url = urlsplit(m.url)
                faults = Faults(stale=9 * 3600 if m.name == STALE else 0.0)
                for addr in m.addresses():
                    dm = DemoMirror(
                        host=str(addr),
                        port=url.port or 443,
                        hostname=url.hostname or "",
                        pki=pki,
                        tree=tree,
                        base_path=url.path,
                        faults=faults,
                    )
                    try:
                        await stack.enter_async_context(dm)
                    except OSError as e:
                        raise SystemExit(
                            f"cannot start demo mirror {m.name} on {addr} port "
                            f"{url.port}: {e.strerror} (is another demo running?)"
                        ) from None
                    mirrors.append(dm)
        say(
            f"Mirrors {len(mirrors)} demo HTTPS servers on loopback "
            f"({STALE} serves a timestamp 9 hours old)"
        )
        store_url = f"sqlite:///{state / 'health.sqlite'}"
        store = Store(store_url)
        rounds = max(p.checks.fall for p in config.pools.values())
        for i in range(rounds):
            result = await run_once(config, store, ca_bundle=pki.ca_bundle)
            say(f"Checker round {i + 1}/{rounds}: {result.summary()}")
        report.print_table(report.build_rows(store.states(), config=config), sys.stdout)
        server = Server(
            ServerSettings(
                config_dir=args.config,
                listen=[("127.0.0.1", args.port), ("::1", args.port)],
                geoip_asn=asn,
                geoip_city=city,
                state_dir=state,
                store_url=store_url,
                health_interval=2.0,
                metrics=("127.0.0.1", args.metrics_port),
            )
        )
        server.load_initial()
        await server.start()
        ok = await show_answers(args.port, args.metrics_port, config, store_url, state)
        site = StatusServer(
            StatusSource(store_url, config=config, cache_seconds=1.0), "127.0.0.1", args.web_port
        )
        try:
            await stack.enter_async_context(site)
        except OSError as e:
            raise SystemExit(
                f"cannot serve the status page on 127.0.0.1:{args.web_port}: {e.strerror} "
                "(--web-port picks another)"
            ) from None
        ok = await show_status_page(site.url) and ok
        if args.once:
            store.close()
            return 0 if ok else 1
        say("Running: a checker round every 30 s. Ctrl-C stops everything.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 30)
            if not stop.is_set():
                result = await run_once(config, store, ca_bundle=pki.ca_bundle)
                say(f"Checker round: {result.summary()}")
        store.close()
        say("Stopping.")
        return 0
    finally:
        if server is not None:
            await server.stop()
        await stack.aclose()
        pki.cleanup()


async def show_answers(
    port: int, metrics_port: int, config: Config, store_url: str, state: Path
) -> bool:
    stale = {
        str(a)
        for p in config.pools.values()
        for m in p.mirrors
        if m.name == STALE
        for a in m.addresses()
    }
    names = {
        str(a): m.name for p in config.pools.values() for m in p.mirrors for a in m.addresses()
    }
    ok = True
    print()
    say(
        f"DNS     geodns on 127.0.0.1:{port} and [::1]:{port}; metrics on "
        f"http://127.0.0.1:{metrics_port}/metrics"
    )
    print()
    for subnet, where in CLIENTS:
        rtype = "AAAA" if ":" in subnet else "A"
        first = await asyncio.to_thread(_ask, port, rtype, subnet)
        seen = set(first)
        for _ in range(5):  # answers rotate among equally near mirrors; collect a few
            seen |= set(await asyncio.to_thread(_ask, port, rtype, subnet))
        got = ", ".join(f"{a} ({names.get(a, '?')})" for a in first) or "(none)"
        more = sorted(seen - set(first))
        if more:
            got += "; in rotation also " + ", ".join(f"{a} ({names.get(a, '?')})" for a in more)
        print(f"  dig @127.0.0.1 -p {port} dl.example.org {rtype} +subnet={subnet}   # {where}")
        print(f"      → {got}")
        if seen & stale:
            ok = False
            print(f"      !! the stale mirror {STALE} was handed out")
    geo = state / "geoip"
    print()
    print(f"  kdig @127.0.0.1 -p {port} dl.example.org A +subnet=192.0.2.0/24")
    print(
        f"  .venv/bin/geodns explain dl.example.org --client 198.51.100.0/24 "
        f"--geoip-dir {geo} --store {store_url}"
    )
    print(f"  .venv/bin/checker report --store {store_url}")
    print()
    say(f"{STALE} never appears: {'confirmed' if ok else 'NOT confirmed'}")
    return ok


async def show_status_page(url: str) -> bool:
    """Print the status page's address and check it shows the stale mirror down."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(url + "api/v1/status.json") as resp:
            doc = await resp.json() if resp.status == 200 else {}
        async with session.get(url) as resp:
            page_ok = resp.status == 200 and STALE in await resp.text()
    stale = [a for a in doc.get("addresses", []) if a["mirror"] == STALE]
    ok = page_ok and bool(stale) and all(a["state"] == "down" for a in stale)
    n = doc.get("summary", {}).get("total", 0)
    say(
        f"Status  {url}  (the status page: {n} addresses; JSON at {url}api/v1/status.json)"
        + ("" if ok else " -- NOT showing the stale mirror down")
    )
    return ok


def _ask(port: int, rtype: str, subnet: str) -> list[str]:
    net = ipaddress.ip_network(subnet)
    q = dns.message.make_query(
        "dl.example.org",
        rtype,
        use_edns=0,
        options=[dns.edns.ECSOption(str(net.network_address), net.prefixlen)],
    )
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
    return [rr.address for rrset in r.answer for rr in rrset if hasattr(rr, "address")]


def say(text: str) -> None:
    print(f"geodns-demo: {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
