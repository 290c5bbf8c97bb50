"""`geodns explain NAME --client ADDR[/PREFIX]`: the command and its text rendering.

The decision itself comes from `geodns.runtime.explain.explain`, which runs
the server's own code path; this module only loads a server and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from geodns.cli.options import settings_from_args
from geodns.errors import ConfigError
from geodns.runtime.explain import explain
from geodns.runtime.server import Server


def cmd_explain(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    settings.persist_health = False  # explain reads the state directory, never writes it
    server = Server(settings)
    try:
        server.load_initial()
    except ConfigError as e:
        print("\n".join(e.problems), file=sys.stderr)
        return 1
    try:
        result = explain(server, args.name, args.client, args.type)
    except ValueError as e:
        print(f"--client: {e}", file=sys.stderr)
        return 2
    finally:
        server.poller.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    return 0


def render(r: dict[str, Any]) -> str:
    g = r["client_geo"]
    loc = "{:.2f},{:.2f}".format(*g["location"]) if g["location"] else "unknown"
    lines = [
        f"{r['name']} {r['type']} for client {r['client']}",
        f"  client: AS{g['asn'] or '?'}  country {g['country'] or '?'}  continent "
        f"{g['continent'] or '?'}  location {loc}  (GeoIP network /{g['network_prefix']})",
        f"  health: {_store_text(r['health'])}, {r['health']['down']} address(es) down, "
        f"{r['health']['drains']} drain(s), {r['health']['slow']} slow",
    ]
    if r["chain"]:
        lines.append(f"  CNAME chain through: {' → '.join(r['chain'])}")
    if not r["steered"]:
        lines.append(f"  {r['note']}; rcode {r['rcode']}")
        return "\n".join(lines)
    band = r["band"]
    lines.append(
        f"  pool {r['pool']}: case '{r['case']}', answers {r['answers']} "
        f"(min {r['min_answers']}), band max(nearest + {band['tie_km']:g} km, "
        f"{band['factor']:g} x nearest), ttl {r['ttl']}s"
    )
    lines.append(
        f"  {'mirror':<16} {'address':<26} {'state':<9} {'tier':<10} {'km':>8} {'weight':>6}  why"
    )
    for m in r["mirrors"]:
        km = "" if m.get("distance_km") is None else f"{m['distance_km']:.0f}"
        lines.append(
            f"  {m['mirror']:<16} {m['address']:<26} {m['state']:<9} {m.get('tier', ''):<10} "
            f"{km:>8} {m.get('weight', ''):>6}  {m['why']}"
        )
    scope = "" if r["ecs_scope"] is None else f"; ECS scope /{r['ecs_scope']}"
    lines.append(
        f"  answer: rcode {r['rcode']}, {', '.join(r['answer']) or '(no addresses)'}"
        f" (one of {r['cycle']} rotating variants){scope}"
    )
    return "\n".join(lines)


def _store_text(h: dict[str, Any]) -> str:
    if not h["store"]:
        return "no health store (every enabled mirror counts as up)"
    if h["store_ok"]:
        return "store OK"
    if h.get("source") == "file":
        return "store unavailable (the snapshot saved by the last run)"
    return "store unavailable (no snapshot: every enabled mirror counts as up)"
