"""Scope keys in the pool YAML (`only`, `also_countries`, `exclude_countries`):
ISO 3166-1 alpha-2 codes from pycountry's list, every problem with file:line."""

from __future__ import annotations

from pathlib import Path

from geodns.config import load_config
from geodns.config.countries import country_code

from .test_config import ZONE_OK, problems, write

POOL = """\
pool: p
mirrors:
  - name: nl
    url: https://nl.example.net/
    ipv4: [192.0.2.10]
    only: country
    also_countries: [BE, lu]
    exclude_countries:
      - FR
  - name: uni
    url: https://uni.example.net/
    ipv4: [192.0.2.11]
    only: asn
  - name: eu
    url: https://eu.example.net/
    ipv4: [192.0.2.12]
    only: continent
    country: gb
"""


def test_scope_keys_load(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {"z.yaml": ZONE_OK, "pools/p.yaml": POOL}))
    nl, uni, eu = cfg.pools["p"].mirrors
    assert (nl.only, nl.also_countries, nl.exclude_countries) == ("country", ("BE", "LU"), ("FR",))
    assert nl.scoped and uni.only == "asn" and uni.also_countries == ()
    assert eu.only == "continent" and eu.country == "GB"
    plain = load_config(write(tmp_path / "b", {"z.yaml": ZONE_OK, "pools/p.yaml": POOL}))
    assert plain.pools["p"] == cfg.pools["p"]  # comparable, hashable model objects


def test_bad_codes_and_contradictions_name_file_line_and_field(tmp_path: Path) -> None:
    pool = """\
    pool: p
    mirrors:
      - name: m1
        url: https://m1.example.net/
        ipv4: [192.0.2.10]
        only: planet
        country: XX
        also_countries:
          - UK
          - Germany
          - DEU
          - NO
          - SE
          - SE
          - ZZ
        exclude_countries: [SE, 7]
      - name: m2
        url: https://m2.example.net/
        ipv4: [192.0.2.11]
        only: asn
        also_countries: XK
        exclude_countries: {DE: yes}
    """
    ps = problems(write(tmp_path, {"z.yaml": ZONE_OK, "pools/p.yaml": pool}))
    want = [
        "pools/p.yaml:6: pool 'p' mirror 'm1': only: expected one of asn, country, continent, "
        "got 'planet'",
        "pools/p.yaml:7: pool 'p' mirror 'm1': country: 'XX' is not an ISO 3166-1 alpha-2 "
        "country code",
        "pools/p.yaml:9: pool 'p' mirror 'm1': also_countries: 'UK' is not an ISO 3166-1 "
        "alpha-2 country code (the United Kingdom is GB)",
        "pools/p.yaml:10: pool 'p' mirror 'm1': also_countries: 'Germany' is not a two-letter "
        "ISO 3166-1 country code (did you mean DE, Germany?)",
        "pools/p.yaml:11: pool 'p' mirror 'm1': also_countries: 'DEU' is not a two-letter "
        "ISO 3166-1 country code (did you mean DE, Germany?)",
        "pools/p.yaml:12: pool 'p' mirror 'm1': also_countries: false is not a country code "
        "(quote Norway: 'NO'; YAML reads NO as false)",
        "pools/p.yaml:14: pool 'p' mirror 'm1': also_countries: SE is listed twice",
        "pools/p.yaml:15: pool 'p' mirror 'm1': also_countries: 'ZZ' is not an ISO 3166-1 "
        "alpha-2 country code",
        "pools/p.yaml:16: pool 'p' mirror 'm1': exclude_countries: expected a two-letter "
        "ISO 3166-1 country code, got 7",
        "pools/p.yaml:16: pool 'p' mirror 'm1': exclude_countries: SE is also in also_countries: "
        "a country cannot be both added and excluded",
        "pools/p.yaml:21: pool 'p' mirror 'm2': also_countries: has no effect with 'only: asn' "
        "(only clients of the mirror's own ASN get it)",
        "pools/p.yaml:22: pool 'p' mirror 'm2': exclude_countries: expected a value or a list "
        "of values, got a mapping",
    ]
    assert sorted(p.removeprefix(f"{tmp_path}/") for p in ps) == sorted(want)


def test_country_codes_come_from_the_maintained_list() -> None:
    # current codes, lower case accepted; withdrawn ones refused; Kosovo as GeoIP spells it
    assert country_code("ss") == ("SS", None)  # South Sudan, assigned 2011
    assert country_code("XK") == ("XK", None)
    for gone in ("AN", "YU", "CS"):  # Netherlands Antilles, Yugoslavia, Serbia and Montenegro
        code, why = country_code(gone)
        assert code is None and why is not None and "not an ISO 3166-1 alpha-2" in why
    assert country_code(True)[0] is None
    assert country_code("")[0] is None
