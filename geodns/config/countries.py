"""Country codes in the operator YAML: ISO 3166-1 alpha-2, checked against
pycountry's maintained list (the ISO list changes: SS in 2011, SX/CW in 2010)
rather than a hand-typed one.

GeoIP databases answer with these codes, upper case; one user-assigned code
is added because MaxMind and DB-IP return it: XK for Kosovo. A scope rule
naming a code no database ever returns would silently match nobody, so an
unknown code is an error.
"""

from __future__ import annotations

from functools import cache
from typing import Any

# User-assigned codes that GeoIP databases return (MaxMind: "XK" for Kosovo).
GEOIP_EXTRA = frozenset({"XK"})


@cache
def _alpha2() -> frozenset[str]:
    import pycountry  # imported on first use: ~20 ms, paid only by configs that name countries

    return frozenset(c.alpha_2 for c in pycountry.countries) | GEOIP_EXTRA


def _hint(text: str) -> str:
    """A suggestion for a name or three-letter code the operator may have meant."""
    if text.upper() == "UK":
        return " (the United Kingdom is GB)"
    import pycountry

    try:
        found = pycountry.countries.lookup(text)
    except LookupError:
        return ""
    return f" (did you mean {found.alpha_2}, {found.name}?)"


def country_code(value: Any) -> tuple[str | None, str | None]:
    """(the code upper-cased, None) or (None, why it is not a country code)."""
    if isinstance(value, bool):
        # YAML 1.1 reads a bare NO (Norway) as false
        word = "true" if value else "false"
        return None, f"{word} is not a country code (quote Norway: 'NO'; YAML reads NO as false)"
    if not isinstance(value, str) or not value.strip():
        return None, f"expected a two-letter ISO 3166-1 country code, got {value!r}"
    text = value.strip()
    code = text.upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        return None, f"'{text}' is not a two-letter ISO 3166-1 country code{_hint(text)}"
    if code not in _alpha2():
        return None, f"'{text}' is not an ISO 3166-1 alpha-2 country code{_hint(text)}"
    return code, None
