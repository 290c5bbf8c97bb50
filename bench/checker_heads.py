"""Checker throughput: object HEADs per second from one checker process.

    .venv/bin/python bench/checker_heads.py                 # 100,000 objects, nginx if installed
    .venv/bin/python bench/checker_heads.py --tls           # the same over HTTPS
    .venv/bin/python bench/checker_heads.py --server demo   # the aiohttp demo mirror instead
    .venv/bin/python bench/checker_heads.py --no-uvloop --pipeline 4 --concurrency 16

A local mirror serves a generated 100,000-object tree on 127.0.0.1: nginx from
Debian (`apt-get install -y nginx-light`) over sparse files in a temporary
directory, or the demo mirror (aiohttp in a separate process; slower than the
checker, so it then limits the figure). The checker's objects probe — the real
code path: manifest plan, keep-alive client, Content-Length checks — HEADs
every object once (a full round). The same server's rate under reference tools
is measured in the same run: `ab -k -i` (HEAD, one path; ab cannot rotate
paths) and `wrk` with a Lua script over the same paths (GET: wrk never
completes a HEAD whose answer carries a Content-Length). The references show
what the server can give; the ratio says how much of it one checker uses.

Target: >= 5,000 HEAD/s per process and a 100k-object round in under a minute
on the 2-core reference machine. Traffic stays on 127.0.0.1; every run is
bounded (one round, a 10 s reference run) and every server is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checker import manifest as mf  # noqa: E402
from checker.probes.objects import probe_objects  # noqa: E402
from checker.target import Target  # noqa: E402
from demo.mirror import DemoMirror  # noqa: E402
from demo.tree import Tree  # noqa: E402
from geodns.model import Checks, Mirror, ObjectsCheck  # noqa: E402

HOST = "127.0.0.1"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- servers


def _serve_demo(port: int, n: int, tls: bool, ready: Any, ca_path: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    tree = Tree.generate(n, seed=7)
    mirror = DemoMirror(host=HOST, port=port, hostname="bench.test", tls=tls, tree=tree)

    async def main() -> None:
        async with mirror:
            if mirror.ca_bundle:
                ca_path.value = str(mirror.ca_bundle).encode()
            ready.set()
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()

    asyncio.run(main())


@contextmanager
def demo_server(n: int, tls: bool) -> Any:
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    ca = ctx.Array("c", 4096)
    proc = ctx.Process(target=_serve_demo, args=(port, n, tls, ready, ca), daemon=True)
    proc.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("demo mirror did not start")
        yield port, (ca.value.decode() or None), "aiohttp demo mirror (1 process, uvloop)"
    finally:
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()


@contextmanager
def nginx_server(tree: Tree, tls: bool) -> Any:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        raise SystemExit("nginx not found: apt-get install -y nginx-light, or use --server demo")
    base = Path(
        tempfile.mkdtemp(
            prefix="geodns-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None
        )
    )
    base.chmod(0o755)  # nginx workers run as an unprivileged user
    root = base / "root"
    try:
        for path, f in tree.files.items():
            p = root / path
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as fh:
                fh.truncate(f.size)  # sparse: the size is what HEAD reports
        port = free_port()
        listen = f"{HOST}:{port}"
        if tls:
            import trustme  # test extra

            ca = trustme.CA()
            ca.issue_cert("bench.test").private_key_and_cert_chain_pem.write_to_path(
                str(base / "bench.pem")
            )
            listen += f" ssl;\n        ssl_certificate {base}/bench.pem;\n"
            listen += f"        ssl_certificate_key {base}/bench.pem"
        conf = base / "nginx.conf"
        conf.write_text(
            f"""
daemon off;
worker_processes 1;
worker_rlimit_nofile 4096;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {base}/tmp;
    proxy_temp_path {base}/tmp;
    fastcgi_temp_path {base}/tmp;
    uwsgi_temp_path {base}/tmp;
    scgi_temp_path {base}/tmp;
    # no open_file_cache: cached descriptors for 100k files exhaust RLIMIT_NOFILE
    server {{
        listen {listen};
        root {root};
    }}
}}
"""
        )
        (base / "tmp").mkdir()
        proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(base)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 10
            import socket

            while time.monotonic() < deadline:
                try:
                    socket.create_connection((HOST, port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise RuntimeError("nginx did not start: " + (proc.stderr.read() or b"").decode())
            yield port, None, "nginx (1 worker)"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- measurements


def checker_round(
    port: int,
    manifest: mf.Manifest,
    tls: bool,
    concurrency: int,
    pipeline: int,
    use_uvloop: bool = True,
) -> tuple[float, dict[str, Any]]:
    scheme = "https" if tls else "http"
    target = Target(
        "bench",
        Mirror("bench", f"{scheme}://bench.test:{port}/"),
        HOST,
        Checks(timeout=10.0),
    )
    check = ObjectsCheck(manifest=Path("unused"), sample=0, concurrency=concurrency)

    async def main() -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        async with asyncio.timeout(300):  # bounded even if the server misbehaves
            record = await probe_objects(target, check, manifest, pipeline=pipeline)
        return time.perf_counter() - t0, {"ok": record.ok, "detail": record.detail, **record.data}

    if use_uvloop:
        try:
            import uvloop

            return uvloop.run(main())
        except ImportError:
            pass
    return asyncio.run(main())


def references(
    port: int, paths: list[str], connections: int, seconds: int, tls: bool
) -> list[tuple[float, str]]:
    """The server's rate under reference tools, each run for `seconds`.

    ab -i sends HEAD (one path: ab cannot rotate). wrk cannot measure HEAD — it
    waits for a body after a HEAD response with a Content-Length and completes
    nothing — so it GETs the same paths (small bodies) with the same connections.
    """
    scheme = "https" if tls else "http"
    out: list[tuple[float, str]] = []
    ab = shutil.which("ab")
    if ab:
        res = subprocess.run(
            [
                ab,
                "-q",
                "-k",
                "-i",
                f"-c{connections}",
                "-n",
                "10000000",
                "-t",
                str(seconds),
                "-H",
                "Host: bench.test",
                f"{scheme}://{HOST}:{port}{paths[0]}",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        ).stdout
        m = re.search(r"Requests per second:\s+([\d.]+)", res)
        if m:
            out.append((float(m.group(1)), f"ab -k -i -c{connections} (HEAD, one path)"))
    wrk = shutil.which("wrk")
    if wrk:
        with tempfile.TemporaryDirectory() as d:
            listing = Path(d) / "paths.txt"
            listing.write_text("\n".join(paths) + "\n")
            script = Path(d) / "get.lua"
            script.write_text(
                f"""
local paths = {{}}
for line in io.lines("{listing}") do paths[#paths + 1] = line end
local i = 0
request = function()
    i = i % #paths + 1
    return wrk.format("GET", paths[i], {{["Host"] = "bench.test"}})
end
"""
            )
            res = subprocess.run(
                [
                    wrk,
                    "-t1",
                    f"-c{connections}",
                    f"-d{seconds}s",
                    "-s",
                    str(script),
                    f"{scheme}://{HOST}:{port}/",
                ],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=False,
            ).stdout
        m = re.search(r"Requests/sec:\s+([\d.]+)", res)
        if m:
            out.append((float(m.group(1)), f"wrk -t1 -c{connections} (GET, same paths)"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument(
        "--server",
        choices=["auto", "demo", "nginx"],
        default="auto",
        help="auto: nginx when installed (the checker is then the bottleneck), else demo",
    )
    ap.add_argument("--tls", action="store_true", help="HTTPS (TLS 1.3, SNI bench.test)")
    ap.add_argument("--concurrency", type=int, default=8, help="connections per mirror")
    ap.add_argument("--pipeline", type=int, default=1, help="HTTP/1.1 pipelining depth")
    ap.add_argument("--no-uvloop", action="store_true", help="the checker on plain asyncio")
    ap.add_argument("--reference-seconds", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="machine-readable result")
    args = ap.parse_args()

    if args.server == "auto":
        args.server = (
            "nginx" if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx") else "demo"
        )
    tree = Tree.generate(args.objects, seed=7)
    manifest = mf.from_dict(tree.manifest())
    paths = ["/" + mf.quote_path(o.path) for o in manifest.objects]
    server = (
        demo_server(args.objects, args.tls)
        if args.server == "demo"
        else nginx_server(tree, args.tls)
    )
    with server as (port, _ca, server_name):
        elapsed, data = checker_round(
            port, manifest, args.tls, args.concurrency, args.pipeline, not args.no_uvloop
        )
        refs = references(port, paths, args.concurrency, args.reference_seconds, args.tls)
    rate = data["checked"] / elapsed if elapsed else 0.0
    result = {
        "objects": args.objects,
        "server": server_name,
        "tls": args.tls,
        "concurrency": args.concurrency,
        "pipeline": args.pipeline,
        "event_loop": "asyncio" if args.no_uvloop else "uvloop",
        "checker_seconds": round(elapsed, 2),
        "checker_heads_per_second": round(rate),
        "checked": data["checked"],
        "missing": data["missing"],
        "errors": data["errors"],
        "references": [{"tool": label, "requests_per_second": round(r)} for r, label in refs],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"server:    {server_name} on {HOST}:{port}{' (TLS)' if args.tls else ''}")
        print(
            f"checker:   {data['checked']} HEADs in {elapsed:.1f}s = {rate:,.0f} HEAD/s "
            f"({args.concurrency} keep-alive connections, pipeline {args.pipeline}, "
            f"{'asyncio' if args.no_uvloop else 'uvloop'}; "
            f"{data['missing']} missing, {data['errors']} errors)"
        )
        for r, label in refs:
            ratio = f"checker/reference = {rate / r:.2f}" if r else "no requests completed"
            print(f"reference: {r:,.0f} req/s with {label}; {ratio}")
        if not refs:
            print("reference: neither ab nor wrk found (apt-get install -y apache2-utils wrk)")
        verdict = "meets" if rate >= 5000 and elapsed < 60 else "MISSES"
        print(f"target:    >= 5,000 HEAD/s and a full round < 60s: {verdict}")
    return 0 if data["checked"] == args.objects else 1


if __name__ == "__main__":
    sys.exit(main())
