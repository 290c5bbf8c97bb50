"""Operator YAML → one frozen `geodns.model.Config`.

`load_config` is the only entry point: it reads every `*.yaml` below a
directory, validates all of it (collecting every problem, each with
file:line: field), and returns the model or raises `ConfigError`.
"""

from geodns.config.loader import FileCache, load_config

__all__ = ["FileCache", "load_config"]
