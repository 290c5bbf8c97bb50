"""`checker drain | undrain | drains`: take a mirror out of DNS answers now,
without a YAML edit or a reload, and put it back.

    checker drain MIRROR --config zones --reason TEXT [--address ADDR] [--pool P] [--for 2h]
    checker undrain MIRROR --config zones [--address ADDR] [--pool P]
    checker drains [--store URL] [--json]

The drain goes to the store (geodns/store/drains.py); every DNS node applies
it at its next health poll. Names are checked against the YAML first: an
unknown mirror, pool or address is an error listing the known ones (exit 2)
and nothing is written.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from checker import text
from checker.errors import CheckerError
from checker.report import drain_text
from geodns.model import Config
from geodns.store import Drain, Store, address_text


class UsageError(CheckerError):
    """A name the configuration does not know (exit 2, nothing written)."""


def who() -> str:
    """The operator: the user behind sudo when there is one."""
    sudo = os.environ.get("SUDO_USER")
    if sudo:
        return sudo
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no LOGNAME (a bare container)
        return f"uid {os.getuid()}"


def _listing(names: list[str], limit: int = 30) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … (+{len(names) - limit} more)" if len(names) > limit else "")


def resolve(
    config: Config, mirror: str, *, pool: str | None, address: str | None, where: str
) -> tuple[str, str, list[tuple[str, str]]]:
    """Check MIRROR, --pool and --address against the configuration.

    Returns (pool or "", address text or "", the (pool, address) pairs the
    drain would cover); raises UsageError naming what is known."""
    in_pools = [p for p in config.pools.values() if any(m.name == mirror for m in p.mirrors)]
    if not in_pools:
        known = sorted({m.name for p in config.pools.values() for m in p.mirrors})
        raise UsageError(f"no mirror named {mirror!r} in {where} (mirrors: {_listing(known)})")
    if pool is not None:
        if pool not in config.pools:
            raise UsageError(
                f"no pool named {pool!r} in {where} (pools: {_listing(sorted(config.pools))})"
            )
        if all(p.name != pool for p in in_pools):
            names = ", ".join(p.name for p in in_pools)
            raise UsageError(f"mirror {mirror!r} is not in pool {pool!r} (it is in: {names})")
        in_pools = [config.pools[pool]]
    covered = [(p.name, address_text(a)) for p in in_pools for a in p.mirror(mirror).addresses()]
    addr = ""
    if address is not None:
        try:
            addr = address_text(address.strip())
        except ValueError:
            raise UsageError(f"--address: {address!r} is not an IP address") from None
        own = sorted({a for _, a in covered}, key=lambda a: (":" in a, a))
        if addr not in own:
            raise UsageError(
                f"mirror {mirror!r} has no address {addr} (its addresses: {', '.join(own)})"
            )
        covered = [(p, a) for p, a in covered if a == addr]
    return pool or "", addr, covered


def _pools_left_empty(config: Config, drains: list[Drain], pools: set[str]) -> list[str]:
    """Pools among `pools` in which every enabled address is now drained."""
    empty = []
    for name in sorted(pools):
        p = config.pools[name]
        live = [
            a
            for m in p.mirrors
            if m.enabled
            for a in m.addresses()
            if not any(d.covers(name, m.name, str(a)) for d in drains)
        ]
        if not live:
            empty.append(name)
    return empty


def cmd_drain(args: argparse.Namespace, config: Config, store_url: str | None) -> int:
    reason = " ".join(args.reason.split())
    if not reason:
        raise UsageError("--reason: say why (it is shown in every report and in explain)")
    pool, addr, covered = resolve(
        config, args.mirror, pool=args.pool, address=args.address, where=str(args.config)
    )
    until = datetime.now(UTC) + timedelta(seconds=args.for_) if args.for_ else None
    store = Store(store_url or _default_url(), create=True)
    try:
        d = store.drain(args.mirror, reason=reason, who=who(), pool=pool, address=addr, until=until)
        drains = store.drains()
    finally:
        store.close()
    addrs = sorted({a for _, a in covered}, key=lambda a: (":" in a, a))
    print(
        f"drained {d.target} ({len(addrs)} address{'es' * (len(addrs) != 1)}: "
        f"{', '.join(addrs)}) {drain_text(d)}"
    )
    for name in _pools_left_empty(config, drains, {p for p, _ in covered}):
        print(
            f"checker: warning: every address of pool {name!r} is drained now: "
            "its names get no addresses (NODATA) until one is undrained",
            file=sys.stderr,
        )
    return 0


def cmd_undrain(args: argparse.Namespace, config: Config, store_url: str | None) -> int:
    store = Store(store_url or _default_url(), create=True)
    try:
        current = store.drains()
        drained_names = {d.mirror for d in current}
        # a mirror since removed from the YAML can still be undrained
        if args.mirror not in drained_names:
            resolve(
                config, args.mirror, pool=args.pool, address=args.address, where=str(args.config)
            )
        if args.address is not None:
            try:
                ipaddress.ip_address(args.address.strip())
            except ValueError:
                raise UsageError(f"--address: {args.address!r} is not an IP address") from None
        address = args.address.strip() if args.address is not None else None
        ended = store.undrain(args.mirror, who=who(), pool=args.pool, address=address)
        left = store.drains()
    finally:
        store.close()
    if not ended:
        mine = [d.target for d in current if d.mirror == args.mirror]
        if mine:
            print(
                f"checker: {args.mirror!r} has no drain matching that "
                f"(its drains: {'; '.join(mine)})",
                file=sys.stderr,
            )
        else:
            names = ", ".join(sorted(drained_names)) or "none"
            print(f"checker: {args.mirror!r} is not drained (drained: {names})", file=sys.stderr)
        return 1
    for d in ended:
        print(f"undrained {d.target} (was drained {drain_text(d)})")
    still = [d for d in left if d.mirror == args.mirror]
    if still:
        # e.g. `undrain M --address A` while all of M is drained: A is still out
        print(
            f"checker: {args.mirror!r} is still drained: "
            + "; ".join(f"{d.target} {drain_text(d)}" for d in still),
            file=sys.stderr,
        )
        return 1
    print(
        "it is answered again from the next health poll of each DNS node, "
        "if the checker finds it up",
        file=sys.stderr,
    )
    return 0


def cmd_drains(args: argparse.Namespace, store_url: str | None) -> int:
    store = Store(store_url or _default_url(), create=False)
    try:
        drains = store.drains()
    finally:
        store.close()
    if args.json:
        print(drains_json(drains))
    else:
        print_drains(drains, sys.stdout)
    return 0


def drains_json(drains: list[Drain]) -> str:
    return json.dumps(
        [
            {
                "mirror": d.mirror,
                "pool": d.pool,
                "address": d.address,
                "who": d.who,
                "at": d.at.isoformat(),
                "until": d.until.isoformat() if d.until else None,
                "reason": d.reason,
            }
            for d in drains
        ],
        indent=2,
    )


def print_drains(
    drains: list[Drain],
    out: IO[str],
    *,
    now: datetime | None = None,
    color: bool | None = None,
    width: int | None = None,
) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    now = now or datetime.now(UTC)
    console = Console(
        file=out, force_terminal=color, no_color=color is False, width=width, highlight=False
    )
    if not drains:
        console.print("no mirror is drained")
        return
    table = Table()
    for col in ("Mirror", "Pool", "Address", "Who", "When (UTC)", "Until (UTC)", "Reason"):
        table.add_column(col, overflow="fold" if col == "Reason" else "ellipsis")
    for d in drains:
        until = f"{text.stamp(d.until)} ({text.ago(d.until, now)})" if d.until else "undrained"
        table.add_row(
            d.mirror,
            d.pool or "(all)",
            d.address or "(all)",
            escape(d.who),
            f"{text.stamp(d.at)} ({text.ago(d.at, now)})",
            until,
            escape(d.reason),
        )
    console.print(table)
    console.print(f"{len(drains)} drain{'s' * (len(drains) != 1)}")


def _default_url() -> str:
    from geodns.settings import default_store_url

    return default_store_url()


def _period(value: str) -> float:
    from geodns.config.fields import duration_arg

    seconds = duration_arg(value)
    if not 0 < seconds <= 10 * 365 * 86400:
        raise argparse.ArgumentTypeError(f"{value!r}: give a positive duration (like 30m, 2h, 1d)")
    return seconds


def add_parsers(sub: Any, store_arg: Any) -> list[argparse.ArgumentParser]:
    """The three subcommands, for checker.cli's parser."""
    from pathlib import Path

    drn = sub.add_parser("drain", help="take a mirror (or one address) out of DNS answers")
    drn.add_argument("mirror", help="mirror name, as in the pool YAML")
    drn.add_argument("--config", required=True, type=Path, help="the zones directory")
    drn.add_argument("--reason", required=True, help="why (shown in reports and explain)")
    drn.add_argument("--address", help="only this address of the mirror")
    drn.add_argument("--pool", help="only in this pool (default: every pool the mirror is in)")
    drn.add_argument(
        "--for",
        dest="for_",
        type=_period,
        default=None,
        metavar="DURATION",
        help="end by itself after this long (like 30m, 2h, 1d; default: until undrained)",
    )
    store_arg(drn)

    und = sub.add_parser("undrain", help="end a drain")
    und.add_argument("mirror", help="mirror name")
    und.add_argument("--config", required=True, type=Path, help="the zones directory")
    und.add_argument("--address", help="only the drain of this address")
    und.add_argument("--pool", help="only the drain in this pool")
    store_arg(und)

    lst = sub.add_parser("drains", help="the drains in force: who, when, why, until")
    store_arg(lst)
    lst.add_argument("--json", action="store_true")
    return [drn, und, lst]
