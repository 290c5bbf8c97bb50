"""Defaults shared by the server and the checker (state directory, store URL).

Only this module reads the environment, and only for these defaults: systemd's
StateDirectory= exports STATE_DIRECTORY; GEODNS_STORE overrides the store URL
so that several nodes can point at one PostgreSQL without editing units.
"""

from __future__ import annotations

import os
from pathlib import Path

GEOIP_DIRS = (Path("/var/lib/GeoIP"), Path("/usr/share/GeoIP"), Path("/usr/local/share/GeoIP"))


def default_state_dir() -> Path:
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        # systemd may pass several colon-separated directories; the first is ours
        return Path(env.split(":")[0])
    return Path(".geodns-state")


def default_store_url(state_dir: Path | None = None) -> str:
    env = os.environ.get("GEODNS_STORE")
    if env:
        return env
    state = state_dir or default_state_dir()
    return f"sqlite:///{state.resolve() / 'health.sqlite'}"
