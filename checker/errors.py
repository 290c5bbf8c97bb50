"""Checker errors: types with text an operator can act on."""

from __future__ import annotations


class CheckerError(Exception):
    """Base of the checker's own errors."""


class ProbeError(CheckerError):
    """A probe could not judge or judged a failure: `kind` and a `reason` in words.

    `unrecoverable` failures take an address down at once (they skip `fall`).
    """

    def __init__(self, kind: str, reason: str, *, unrecoverable: bool = False) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason
        self.unrecoverable = unrecoverable


class ManifestError(CheckerError):
    """A manifest file is missing or malformed; the text names the file and why."""
