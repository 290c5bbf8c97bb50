"""Operator YAML → one frozen `geodns.model.Config`.

`load_config` is the only entry point: it reads every `*.yaml` below a
directory, validates all of it (collecting every problem, each with
file:line: field), and returns the model or raises `ConfigError`.

The loader is imported on first use (PEP 562): the CLI's parser needs only
`geodns.config.fields`, and a command such as `geodns withdraw` — run by
systemd when a node fails — should not wait for YAML, DNSSEC and zone code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geodns.config.loader import FileCache, load_config

__all__ = ["FileCache", "load_config"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from geodns.config import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
