"""What the throughput probe measures, and how many bytes a round costs.

    .venv/bin/python bench/throughput_probe.py                   # defaults below
    .venv/bin/python bench/throughput_probe.py --rounds 5 --sample 1MiB --budget 4MiB \\
        --throttle 250000 --throttle 1000000

Demo mirrors (HTTPS, aiohttp, on 127.0.0.1, one at a time): a normal one, one
throttled per `--throttle` (bytes/second, paced body writes), and one that
ignores Range. Each gets `--rounds` rounds of the real probe
(`checker.probes.throughput.probe_throughput`, the scheduler's code path minus
the store), and the table shows per round the measured MB/s and time to first
byte, the body bytes the checker read, the bytes the mirror wrote, and the
moving median with its verdict. Bounded: a round stops at the `--timeout`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checker.manifest import from_dict  # noqa: E402
from checker.probes.throughput import mbps_text, probe_throughput  # noqa: E402
from checker.target import Target  # noqa: E402
from demo.mirror import DemoMirror, DemoPKI, Faults, mirror_entry  # noqa: E402
from demo.tree import Tree  # noqa: E402
from geodns.config.fields import parse_size, show_size  # noqa: E402
from geodns.model import Checks, ThroughputCheck  # noqa: E402


def _size(text: str) -> int:
    n = parse_size(text)
    if n is None or n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 1MiB")
    return n


async def main(args: argparse.Namespace) -> None:
    tree = Tree.generate(20)
    # a spread of sizes, as in a real tree: the probe picks by size
    for mib in (1, 3, 8):
        tree.add(f"pub/file-{mib}MiB.bin", size=mib << 20)
    manifest = from_dict(tree.manifest())
    check = ThroughputCheck(
        manifest=Path("bench"),
        min_mbps=args.min_mbps,
        rounds=args.median,
        sample_bytes=args.sample,
        budget=args.budget,
    )
    cases: list[tuple[str, Faults]] = [("normal", Faults())]
    cases += [(f"throttled {t / 1e6:g} MB/s", Faults(throttle=t)) for t in args.throttle]
    cases.append(("ignores Range", Faults(no_range=True)))
    pki = DemoPKI()
    print(
        f"sample {show_size(args.sample)}, budget {show_size(args.budget)}, "
        f"median of {args.median}, min {args.min_mbps:g} MB/s; MB = 10^6 bytes"
    )
    print(
        f"{'mirror':<22} {'round':>5} {'MB/s':>9} {'TTFB':>8} {'read':>9} {'served':>9} "
        f"{'status':>6}  median"
    )
    try:
        for name, faults in cases:
            async with DemoMirror(pki=pki, tree=tree, hostname="bench.test", faults=faults) as m:
                target = Target(
                    "bench",
                    mirror_entry("m", m),
                    "127.0.0.1",
                    Checks(throughput=check, timeout=args.timeout),
                )
                prev: dict[str, Any] = {}
                for i in range(args.rounds):
                    before = m.body_bytes
                    r = await probe_throughput(target, check, manifest, prev)
                    await asyncio.sleep(0.2)  # the mirror's last writes after a cut-off
                    prev = r.data
                    d = r.data
                    ttfb = "-" if d.get("ttfb") is None else f"{d['ttfb'] * 1000:.0f}ms"
                    verdict = {True: "slow", False: "fast", None: "-"}[d.get("slow")]
                    print(
                        f"{name:<22} {i + 1:>5} {mbps_text(d.get('mbps', 0.0)):>9} {ttfb:>8} "
                        f"{d.get('bytes', 0):>9} {m.body_bytes - before:>9} "
                        f"{d.get('status') or '-':>6}  {d.get('summary', '')} [{verdict}]"
                    )
    finally:
        pki.cleanup()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--median", type=int, default=3, help="rounds in the moving median")
    ap.add_argument("--sample", type=_size, default=1 << 20)
    ap.add_argument("--budget", type=_size, default=4 << 20)
    ap.add_argument("--min-mbps", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument(
        "--throttle",
        type=float,
        action="append",
        help="bytes/second of a throttled mirror (repeatable; default 400000)",
    )
    a = ap.parse_args()
    a.throttle = a.throttle or [400_000.0]
    if a.budget < a.sample:
        ap.error("--budget must be at least --sample")
    asyncio.run(main(a))
