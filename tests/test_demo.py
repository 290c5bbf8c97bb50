"""The README's first command, run once: mirrors, checker rounds, server, answers,
status page."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .util import REPO, free_port


def test_demo_once(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "demo.run",
            "--once",
            "--state-dir",
            str(tmp_path / "demo"),
            "--port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--web-port",
            str(web := free_port()),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "mirror-fr  │ 127.4.0.1  │ down" in out and "stale: 9h behind" in out, out
    # Berlin: one German mirror per answer (weights 100:50 make sets of one),
    # the other in rotation, nothing farther
    assert re.search(
        r"→ (127\.1\.0\.1 \(mirror-de\); in rotation also 127\.5\.0\.1 \(mirror-de2\)"
        r"|127\.5\.0\.1 \(mirror-de2\); in rotation also 127\.1\.0\.1 \(mirror-de\))\n",
        out,
    ), out
    assert "→ 127.2.0.1 (mirror-us)\n" in out, out  # New York: the US mirror alone
    assert "mirror-fr never appears: confirmed" in out, out
    # the status page was served and showed the stale mirror down (the demo checks it)
    assert f"Status  http://127.0.0.1:{web}/  (the status page: 7 addresses;" in out, out
    assert "NOT showing" not in out, out
