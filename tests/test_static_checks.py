"""The packages stay lint-clean and type-check under mypy --strict (docs/architecture.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from .util import REPO


def _tool(name: str) -> list[str]:
    exe = shutil.which(name, path=str(REPO / ".venv" / "bin")) or shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return [exe]


def test_ruff_check_and_format() -> None:
    for args in (
        ["check", "geodns", "checker", "tests", "bench"],
        ["format", "--check", "geodns", "checker", "tests", "bench"],
    ):
        r = subprocess.run(
            _tool("ruff") + args, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_on_the_packages() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "geodns", "checker", "demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
