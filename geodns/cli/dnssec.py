"""`geodns dnssec keygen` and `geodns dnssec ds`.

geodns dnssec keygen example.org --csk --dir zones/keys
geodns dnssec ds example.org --config zones/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geodns.dns.names import name_problem
from geodns.errors import ConfigError

# geodns.dnssec.keyfiles (dnspython's DNSSEC and cryptography) is imported by
# the commands that use it: every `geodns` command builds this parser.


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    d: argparse.ArgumentParser = sub.add_parser(
        "dnssec", help="DNSSEC keys: make them, print DS records for the parent"
    )
    dsub = d.add_subparsers(dest="dnssec_cmd", required=True)
    k = dsub.add_parser(
        "keygen",
        help="make an ECDSA P-256 key pair (BIND K<zone>.+013+<tag>.key/.private files)",
    )
    k.add_argument("zone")
    role = k.add_mutually_exclusive_group()
    role.add_argument(
        "--ksk", action="store_true", help="a key-signing key (flags 257; signs the DNSKEY set)"
    )
    role.add_argument(
        "--csk",
        action="store_true",
        help="a combined signing key (flags 257; signs everything when the zone has no ZSK)",
    )
    k.add_argument("--dir", type=Path, default=Path("."), help="where to write the files (.)")
    s = dsub.add_parser("ds", help="print the DS records of the zone's KSK/CSK for the parent")
    s.add_argument("zone")
    s.add_argument("--config", "-c", type=Path, default=Path("zones"))
    s.add_argument(
        "--digest", choices=["SHA256", "SHA384"], default="SHA256", help="digest type (SHA256)"
    )
    return d


def run(args: argparse.Namespace) -> int:
    zone = args.zone.strip().lower().rstrip(".")
    if (why := name_problem(zone)) is not None:
        print(f"geodns dnssec: '{args.zone}' is not a zone name: {why}", file=sys.stderr)
        return 2
    if args.dnssec_cmd == "keygen":
        return _keygen(zone, args.dir, sep=args.ksk or args.csk)
    return _ds(zone, args.config, args.digest)


def _keygen(zone: str, directory: Path, *, sep: bool) -> int:
    from geodns.dnssec.keyfiles import KeyFileError, generate

    try:
        base = generate(zone, directory, sep=sep)
    except (KeyFileError, OSError) as e:
        print(f"geodns dnssec keygen: {e}", file=sys.stderr)
        return 1
    print(base)
    return 0


def _ds(zone: str, config: Path, digest: str) -> int:
    from geodns.config import load_config
    from geodns.dnssec.keyfiles import ds_text

    try:
        cfg = load_config(config)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return 1
    z = next((z for z in cfg.zones if z.name == zone), None)
    if z is None:
        print(f"geodns dnssec ds: no zone '{zone}' in {config}", file=sys.stderr)
        return 1
    if z.dnssec is None:
        print(f"geodns dnssec ds: zone '{zone}' has no dnssec: key", file=sys.stderr)
        return 1
    import time

    now = time.time()
    keys = [k for k in z.dnssec.loaded if k.sep and k.published(now)]
    for k in keys:
        state = "signing" if k.active(now) else "published, not signing"
        print(f"; {Path(k.path).name}: {k.role}, tag {k.tag}, {state}")
        print(ds_text(zone, k, digest))
    return 0
