"""The `geodns` command line (validate, serve, explain, geoip-demo, withdraw)."""

from geodns.cli.commands import main

__all__ = ["main"]
