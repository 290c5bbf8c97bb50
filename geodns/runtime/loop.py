"""The event loop the server runs on: uvloop (a dependency), asyncio as a fallback."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when available (the fallback is for odd platforms)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)
