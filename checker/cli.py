"""`checker`: probe mirrors, record why in the store, report to the people on call.

    checker run --config zones [--store URL] [--once] [--region NAME] [--ca-bundle FILE]
                [--pool NAME]... [--metrics HOST:PORT] [--log-level L]
    checker report [--config zones] [--store URL] [--json | --nagios | --html FILE] [--pool P]
                   [--state S]
    checker web [--listen 127.0.0.1:8080] [--config zones] [--store URL] [--pool P]
                [--region R] [--max-age D]
    checker nagios [--config zones] [--store URL] [--pool P] [--crit-down N] [--warn-down N]
    checker history MIRROR [--store URL] [--pool P] [--limit N] [--json]
    checker manifest build ROOT [--sha256] [-o FILE]
    checker manifest publish ROOT --pool POOL [--store URL] [--sha256] [--exclude GLOB]...
                             [--paths-from FILE] [--max-removed FRACTION]
    checker manifest drop POOL [--store URL]
    checker forget (--config zones | --region NAME) [--store URL] [--dry-run]
    checker drain MIRROR --config zones --reason TEXT [--address A] [--pool P] [--for 2h]
    checker undrain MIRROR --config zones [--address A] [--pool P]
    checker drains [--store URL] [--json]

Exit codes: 0 fine; 1 the store or a probe setup failed; 2 bad usage or
configuration; `nagios` uses the plugin codes 0/1/2/3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from checker import drain, history, nagios, report, text
from checker.errors import CheckerError, ManifestError
from checker.target import targets_of
from geodns.config import fields
from geodns.settings import default_store_url
from geodns.store import ExpectedHead, Store, StoreError

log = logging.getLogger("checker")


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return n


def _addr(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:9478")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="checker", description="Health checker for geodns mirror pools."
    )
    ap.add_argument(
        "--log-level",
        default=os.environ.get("CHECKER_LOG_LEVEL", "info"),
        help="debug, info, warning, error (default info)",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def store_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--store",
            default=None,
            help="SQLAlchemy URL (default: $GEODNS_STORE or the state directory's SQLite file)",
        )

    run = sub.add_parser("run", help="probe the mirrors (loop, or one round with --once)")
    run.add_argument("--config", required=True, type=Path, help="the zones directory")
    store_arg(run)
    run.add_argument("--once", action="store_true", help="one round, then exit (cron, demo)")
    run.add_argument("--region", default="", help="this checker's region tag (quorum)")
    run.add_argument("--ca-bundle", type=Path, help="trust this CA bundle instead of the system's")
    run.add_argument("--pool", action="append", help="only this pool (repeatable)")
    run.add_argument(
        "--metrics", type=_addr, metavar="HOST:PORT", help="serve Prometheus metrics here"
    )
    run.add_argument("--parallel", type=int, default=32, help="addresses checked at once")
    run.add_argument("--jitter", type=float, default=0.1, help="interval jitter (fraction)")
    run.add_argument(
        "--pipeline",
        type=_positive,
        default=1,
        help="object HEADs in flight per keep-alive connection (HTTP/1.1 pipelining; "
        "default 1 = off, as some mirrors' servers mishandle it)",
    )
    run.add_argument(
        "--keep-results",
        type=fields.duration_arg,
        default=7 * 86400,
        help="prune probe results older than this (default 7d)",
    )
    run.add_argument(
        "--keep-history",
        type=fields.duration_arg,
        default=90 * 86400,
        help="prune state changes older than this (default 90d)",
    )

    def report_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="also list addresses never checked")
        store_arg(p)
        p.add_argument("--pool", action="append", help="only this pool (repeatable)")
        p.add_argument("--region", default=None, help="only this region's view")
        p.add_argument(
            "--max-age",
            type=fields.duration_arg,
            default=3600,
            help="flag results older than this as stale (default 1h)",
        )
        p.add_argument(
            "--expected-max-age",
            type=fields.duration_arg,
            default=report.EXPECTED_MAX_AGE,
            help="warn when a pool's expected state was last published longer ago "
            "(the leader stopped; default 3h)",
        )

    rep = sub.add_parser("report", help="a table of every mirror address")
    report_args(rep)
    fmt = rep.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON (schema in checker/report.py)")
    fmt.add_argument("--nagios", action="store_true", help="Nagios plugin output and exit code")
    fmt.add_argument(
        "--html", type=Path, metavar="FILE", help="the status page's overview as one HTML file"
    )
    rep.add_argument(
        "--state", choices=["up", "down", "warning", "slow", "disabled", "drained", "unknown"]
    )
    rep.add_argument("--crit-down", type=int, default=1, help=argparse.SUPPRESS)
    rep.add_argument("--warn-down", type=int, default=None, help=argparse.SUPPRESS)

    nag = sub.add_parser("nagios", help="Nagios/Icinga plugin: exit 0/1/2/3 with perfdata")
    report_args(nag)
    nag.add_argument(
        "--crit-down",
        type=int,
        default=1,
        help="CRITICAL when this many addresses are down (default 1)",
    )
    nag.add_argument(
        "--warn-down", type=int, default=None, help="WARNING when this many addresses are down"
    )

    webp = sub.add_parser("web", help="the read-only status site (HTML, JSON, /healthz)")
    report_args(webp)
    webp.add_argument(
        "--listen",
        type=_addr,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="address of the site (default 127.0.0.1:8080)",
    )

    his = sub.add_parser("history", help="state changes of a mirror (name or address)")
    his.add_argument("mirror", help="mirror name, or an address")
    store_arg(his)
    his.add_argument("--pool")
    his.add_argument("--limit", type=int, default=50)
    his.add_argument("--json", action="store_true")

    fgt = sub.add_parser(
        "forget",
        help="drop addresses no longer in the YAML, or a decommissioned region, from the store",
    )
    what = fgt.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--config", type=Path, help="forget every address this zones directory no longer lists"
    )
    what.add_argument("--region", help="forget this region's states, results and history")
    store_arg(fgt)
    fgt.add_argument("--dry-run", action="store_true", help="only list what would go")

    man = sub.add_parser("manifest", help="object manifests")
    msub = man.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")
    build = msub.add_parser("build", help="walk an origin tree into manifest JSON")
    build.add_argument("root", type=Path)
    build.add_argument("--sha256", action="store_true", help="hash every file (slow)")
    build.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    build.add_argument(
        "--exclude",
        action="append",
        default=None,
        help="glob of names to skip (repeatable; default: rsync temp files)",
    )
    pub = msub.add_parser(
        "publish",
        help="walk the origin tree into the store as the pool's expected state (on the origin)",
    )
    pub.add_argument("root", type=Path, help="the origin's copy of the tree")
    pub.add_argument("--pool", required=True, help="the name checkers read (`manifest: store`)")
    store_arg(pub)
    pub.add_argument(
        "--sha256",
        action="store_true",
        help="hash new and changed files (unchanged ones keep theirs)",
    )
    pub.add_argument(
        "--exclude",
        action="append",
        default=None,
        help="glob of names (or, with a '/', of paths below ROOT) to skip "
        "(repeatable; default: rsync temp files)",
    )
    pub.add_argument(
        "--paths-from",
        metavar="FILE",
        help="look only at these paths (one per line, relative to ROOT; '-' = stdin), "
        "e.g. what `rsync --out-format=%%n` printed: directories with all below them, "
        "missing ones become removed",
    )
    pub.add_argument(
        "--max-removed",
        type=float,
        default=0.5,
        metavar="FRACTION",
        help="refuse to mark more than this share of the objects removed (an unmounted "
        "file system looks like that; default 0.5, 1 allows anything)",
    )
    drop = msub.add_parser("drop", help="delete a pool's expected state from the store")
    drop.add_argument("pool")
    store_arg(drop)
    drain_parsers = drain.add_parsers(sub, store_arg)
    for p in (run, rep, nag, webp, his, fgt, build, pub, drop, *drain_parsers):
        # `checker run --log-level debug` reads better than `checker --log-level debug run`
        p.add_argument("--log-level", dest="sub_log_level", default=None, help=argparse.SUPPRESS)
    return ap


_console: Any = None


def _stderr_console() -> Any:
    """One rich Console for stderr, shared by log lines and the progress bar so
    that log lines print above the bar instead of through it."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True)
    return _console


def _setup_logging(level: str) -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(console=_stderr_console(), show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:  # journald and files get plain lines
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=lvl, handlers=[handler])
    # Alembic narrates every migration step at INFO; only its problems matter here.
    logging.getLogger("alembic").setLevel(max(lvl, logging.WARNING))


def _load_config(root: Path) -> Any:
    try:
        from geodns.config import load_config
        from geodns.errors import ConfigError
    except ImportError as exc:  # pragma: no cover - while geodns.config is being written
        raise CheckerError(f"cannot load configuration: {exc}") from None
    try:
        return load_config(root)
    except ConfigError as exc:
        problems = getattr(exc, "problems", None) or [str(exc)]
        raise CheckerError("configuration is not valid:\n  " + "\n  ".join(problems)) from None


def _arun(coro: Any) -> Any:
    """Run on uvloop when installed: ~40% more object HEADs per second
    (bench/checker_heads.py), same behaviour otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def _store(url: str | None, *, create: bool) -> Store:
    return Store(url or default_store_url(), create=create)


# --------------------------------------------------------------------------- run


def _progress(total: int) -> tuple[Any, Any]:
    """A rich progress bar on a terminal, or (None, None)."""
    if not sys.stderr.isatty() or total == 0:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("checking"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
        console=_stderr_console(),
        transient=True,
    )
    task = progress.add_task("check", total=total, last="")
    return progress, task


def cmd_run(args: argparse.Namespace) -> int:
    from checker.scheduler import Checker

    config = _load_config(args.config)
    store = _store(args.store, create=True)
    try:
        checker = Checker(
            config,
            store,
            region=args.region,
            ca_bundle=args.ca_bundle,
            pools=args.pool,
            max_parallel=args.parallel,
            pipeline=args.pipeline,
        )
    except BaseException:
        store.close()
        raise
    if args.metrics:
        from prometheus_client import start_http_server

        host, port = args.metrics
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)
    try:
        if args.once:
            progress, task = _progress(len(checker.targets))

            def done(t: Any, ev: Any) -> None:
                if progress is not None:
                    state = "DOWN" if not ev.up else ("SLOW" if ev.slow else "up")
                    progress.update(task, advance=1, last=f"{t.label} {state}")

            if progress is not None:
                progress.start()
            try:
                result = _arun(checker.round(on_done=done))
            finally:
                if progress is not None:
                    progress.stop()
            store.prune(timedelta(seconds=args.keep_results), timedelta(seconds=args.keep_history))
            for c in result.changes:
                print(f"{c.pool}/{c.mirror} {c.address}: {c.state}: {c.reason}")
            print(result.summary())
            return 0
        return _run_forever(checker, args)
    finally:
        checker.close()
        store.close()


def _run_forever(checker: Any, args: argparse.Namespace) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def reload() -> None:
            # SIGHUP: a bad new config keeps the old one running.
            try:
                checker.update(_load_config(args.config))
                log.info("configuration reloaded: %d addresses", len(checker.targets))
            except CheckerError as exc:
                log.error("reload failed, keeping the old configuration: %s", exc)

        loop.add_signal_handler(signal.SIGHUP, reload)
        log.info(
            "checking %d addresses in %d pools%s",
            len(checker.targets),
            len(checker.pools),
            f" as region {args.region!r}" if args.region else "",
        )
        await checker.run(
            stop,
            jitter=args.jitter,
            keep_results=timedelta(seconds=args.keep_results),
            keep_history=timedelta(seconds=args.keep_history),
        )

    _arun(main())
    return 0


# --------------------------------------------------------------------------- reports


def _rows(
    args: argparse.Namespace, state: str | None = None
) -> tuple[list[report.Row], list[report.Expected]]:
    config = _load_config(args.config) if args.config else None
    store = _store(args.store, create=False)
    try:
        states = store.states(region=args.region)
        drains = store.drains()
        heads: list[ExpectedHead] | None
        error = None
        try:
            heads = store.expected_heads()
        except StoreError as exc:  # e.g. a store not yet upgraded by a newer checker
            heads, error = None, str(exc)
    finally:
        store.close()
    rows = report.build_rows(
        states, config=config, pools=args.pool, state=state, max_age=args.max_age, drains=drains
    )
    expected = report.build_expected(
        heads, config=config, pools=args.pool, max_age=args.expected_max_age, error=error
    )
    return rows, expected


def cmd_report(args: argparse.Namespace) -> int:
    if args.nagios:
        return cmd_nagios(args)
    rows, expected = _rows(args, args.state)
    if args.json:
        print(report.to_json(rows, expected=expected))
    elif args.html:
        from .web.render import export_html

        body = export_html(rows, expected=expected, max_age=args.max_age)
        tmp = args.html.with_name(args.html.name + ".tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(args.html)  # a web server never serves half a page
    else:
        report.print_table(rows, sys.stdout, expected=expected)
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from .web.app import serve
    from .web.data import StatusSource

    config = _load_config(args.config) if args.config else None
    source = StatusSource(
        args.store or default_store_url(),
        config=config,
        max_age=args.max_age,
        region=args.region,
        pools=args.pool,
        expected_max_age=args.expected_max_age,
    )
    reload = (lambda: _load_config(args.config)) if args.config else None
    host, port = args.listen
    _arun(serve(source, host, port, reload_config=reload))
    return 0


def cmd_nagios(args: argparse.Namespace) -> int:
    try:
        rows, expected = _rows(args)
    except (StoreError, CheckerError) as exc:
        code, out = nagios.nagios_unknown(str(exc).splitlines()[0])
    else:
        code, out = nagios.nagios(
            rows, warn_down=args.warn_down, crit_down=args.crit_down, expected=expected
        )
    print(out)
    return code


def cmd_history(args: argparse.Namespace) -> int:
    import ipaddress

    store = _store(args.store, create=False)
    try:
        try:
            addr: str | None = str(ipaddress.ip_address(args.mirror))
        except ValueError:
            addr = None
        if addr is not None:
            changes = store.history(address=addr, pool=args.pool, limit=args.limit)
            events = store.drain_events(address=addr, limit=args.limit)
        else:
            changes = store.history(args.mirror, pool=args.pool, limit=args.limit)
            events = store.drain_events(args.mirror, limit=args.limit)
    finally:
        store.close()
    if args.pool is not None:
        events = [e for e in events if e.pool in ("", args.pool)]
    lines = history.history_lines(changes, events, limit=args.limit)
    if args.json:
        print(history.history_json(lines))
        return 0
    if not lines:
        print(f"no state changes or drains recorded for {args.mirror!r}", file=sys.stderr)
        return 1
    history.print_history(lines, sys.stdout)
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    if args.manifest_command == "publish":
        return cmd_manifest_publish(args)
    if args.manifest_command == "drop":
        return cmd_manifest_drop(args)
    from checker import manifest as mf

    progress: Any = None
    task: Any = None
    if sys.stderr.isatty():
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.completed} files"),
            TimeElapsedColumn(),
            console=_stderr_console(),
            transient=True,
        )
        task = progress.add_task("walk", total=None)
        progress.start()
    try:
        doc = mf.build(
            args.root,
            sha256=args.sha256,
            exclude=args.exclude if args.exclude is not None else mf.DEFAULT_EXCLUDES,
            progress=(lambda n: progress.advance(task, n)) if task is not None else None,
        )
    finally:
        if progress is not None:
            progress.stop()
    body = json.dumps(doc, indent=None, separators=(",", ":")) + "\n"
    if args.output:
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(body)
        tmp.replace(args.output)  # readers never see half a manifest
        print(f"{len(doc['objects'])} objects written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(body)
    return 0


def cmd_manifest_publish(args: argparse.Namespace) -> int:
    from checker import manifest as mf
    from checker.publish import check_pool_name, publish, sync_path

    check_pool_name(args.pool)
    if not 0 <= args.max_removed <= 1:
        raise CheckerError(f"--max-removed {args.max_removed}: expected a fraction from 0 to 1")
    paths: list[str] | None = None
    if args.paths_from is not None:
        try:
            if args.paths_from == "-":
                lines = sys.stdin.read().splitlines()
            else:
                lines = Path(args.paths_from).read_text(errors="surrogateescape").splitlines()
        except OSError as exc:
            raise CheckerError(f"{args.paths_from}: cannot read: {exc.strerror}") from None
        paths = [p for line in lines if (p := sync_path(line)) is not None]
    store = _store(args.store, create=True)
    try:
        t0 = time.perf_counter()
        done = publish(
            store,
            args.pool,
            args.root,
            paths=paths,
            sha256=args.sha256,
            exclude=args.exclude if args.exclude is not None else mf.DEFAULT_EXCLUDES,
            max_removed=args.max_removed,
        )
        elapsed = time.perf_counter() - t0
    finally:
        store.close()
    for problem in done.problems[:20]:
        print(f"checker: {problem}", file=sys.stderr)
    if len(done.problems) > 20:
        print(f"checker: … and {len(done.problems) - 20} more", file=sys.stderr)
    h = done.head
    extra = f", {done.rehashed} hashed" if done.rehashed else ""
    print(
        f"{h.pool}: version {h.version}: {done.added} added, {done.changed} changed, "
        f"{done.removed} removed{extra}; {h.objects:,} objects ({text.size(h.bytes)}), "
        f"{h.dirs:,} director{'y' if h.dirs == 1 else 'ies'}, {h.gone:,} removed kept; "
        f"{text.duration(elapsed)}"
    )
    return 0


def cmd_manifest_drop(args: argparse.Namespace) -> int:
    store = _store(args.store, create=False)
    try:
        head = store.expected_head(args.pool)
        if head is None:
            known = ", ".join(h.pool for h in store.expected_heads()) or "none"
            print(
                f"checker: no expected state for {args.pool!r} (published: {known})",
                file=sys.stderr,
            )
            return 1
        rows = store.drop_expected(args.pool)
    finally:
        store.close()
    print(f"dropped the expected state of {args.pool!r}: version {head.version}, {rows:,} rows")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Addresses removed from the YAML stay in the store (and in reports, as
    stale rows) until forgotten; so do the votes of a region shut down."""
    store = _store(args.store, create=False)
    try:
        if args.region is not None:
            n = len(store.states(region=args.region))
            if n == 0:
                known = ", ".join(repr(r) for r in sorted(store.region_last_checks())) or "none"
                print(
                    f"checker: no region {args.region!r} in the store (regions: {known})",
                    file=sys.stderr,
                )
                return 1
            if not args.dry_run:
                store.forget(region=args.region)
            print(
                f"{'would forget' if args.dry_run else 'forgot'} region {args.region!r}: {n} states"
            )
            return 0
        config = _load_config(args.config)
        listed = {t.key for pool in config.pools.values() for t in targets_of(pool)}
        gone = [k for k in store.addresses() if k not in listed]
        for pool, mirror, address in gone:
            print(f"{pool}/{mirror} {address}")
        if not args.dry_run:
            store.forget(gone)
        verb = "would forget" if args.dry_run else "forgot"
        print(f"{verb} {len(gone)} addresses not in {args.config}", file=sys.stderr)
        return 0
    finally:
        store.close()


def cmd_drain(args: argparse.Namespace) -> int:
    return drain.cmd_drain(args, _load_config(args.config), args.store)


def cmd_undrain(args: argparse.Namespace) -> int:
    return drain.cmd_undrain(args, _load_config(args.config), args.store)


def cmd_drains(args: argparse.Namespace) -> int:
    return drain.cmd_drains(args, args.store)


COMMANDS = {
    "run": cmd_run,
    "report": cmd_report,
    "nagios": cmd_nagios,
    "web": cmd_web,
    "history": cmd_history,
    "manifest": cmd_manifest,
    "forget": cmd_forget,
    "drain": cmd_drain,
    "undrain": cmd_undrain,
    "drains": cmd_drains,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(getattr(args, "sub_log_level", None) or args.log_level)
    try:
        return COMMANDS[args.command](args)
    except StoreError as exc:
        print(f"checker: {exc}", file=sys.stderr)
        return 1
    except ManifestError as exc:
        print(f"checker: {exc}", file=sys.stderr)
        return 2
    except CheckerError as exc:
        print(f"checker: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
