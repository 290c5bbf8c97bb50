"""Exception types shared by the server and the checker."""

from __future__ import annotations


class GeoDNSError(Exception):
    """Base class for errors an operator is meant to read."""


class ConfigError(GeoDNSError):
    """The operator YAML is invalid. `problems` holds every reason, one per line,
    each of the form `file:line: context: field: what was expected`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in configuration"
        super().__init__(head + ":\n" + "\n".join(self.problems))

    def __reduce__(self) -> tuple[type, tuple[list[str]]]:
        # picklable as itself, so a reload built in a child process reports it
        return (ConfigError, (self.problems,))
