"""Validation of operator YAML: every error names file, line and field, all at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from geodns.cli import main as cli_main
from geodns.config import load_config
from geodns.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

ZONE_OK = """\
zone: example.org
soa: {mname: ns1.example.org, rname: hostmaster.example.org}
ns: [ns1.example.org]
records:
  ns1: {A: 192.0.2.53}
steered:
  dl: {pool: p}
"""
POOL_OK = """\
pool: p
mirrors:
  - name: m1
    url: https://m1.example.net/
    ipv4: [192.0.2.10]
"""


def zone_with(records: str) -> str:
    """ZONE_OK with more lines under `records:` (from line 6 on)."""
    return ZONE_OK.replace("steered:\n", records + "steered:\n")


def write(d: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return d


def problems(d: Path) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config(d)
    return ei.value.problems


def one(d: Path, files: dict[str, str]) -> str:
    ps = problems(write(d, files))
    assert len(ps) == 1, ps
    return ps[0]


def test_example_zones_validate() -> None:
    cfg = load_config(REPO / "zones")
    assert [z.name for z in cfg.zones] == ["example.org"]
    assert "distfiles" in cfg.pools


def test_good_config_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {"z.yaml": ZONE_OK, "pools/p.yaml": POOL_OK}))
    assert cfg.zones[0].steered[0].pool == "p" and cfg.zones[0].soa.serial > 2026000000


def test_bad_ipv4_names_file_line_mirror_and_field(tmp_path: Path) -> None:
    msg = one(
        tmp_path, {"z.yaml": ZONE_OK, "pools/p.yaml": POOL_OK.replace("192.0.2.10", "300.1.2.3")}
    )
    assert msg.endswith(
        "pools/p.yaml:5: pool 'p' mirror 'm1': ipv4: '300.1.2.3' is not an IPv4 address"
    )


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    msg = one(tmp_path, {"z.yaml": ZONE_OK, "pools/p.yaml": POOL_OK + "    wieght: 10\n"})
    assert "pools/p.yaml:6:" in msg and "unknown key 'wieght'" in msg and "weight" in msg


def test_bad_names(tmp_path: Path) -> None:
    z = ZONE_OK.replace(
        "ns1: {A: 192.0.2.53}", "ns1: {A: 192.0.2.53}\n  bad_label!: {A: 192.0.2.1}"
    )
    msg = one(tmp_path, {"z.yaml": z, "pools/p.yaml": POOL_OK})
    assert "z.yaml:6:" in msg and "record 'bad_label!'" in msg and "not a valid owner name" in msg
    msg = one(tmp_path / "b", {"z.yaml": ZONE_OK + "  x..y: {pool: p}\n", "pools/p.yaml": POOL_OK})
    assert "z.yaml:8:" in msg and "steered 'x..y'" in msg and "empty label" in msg


def test_cname_beside_other_data(tmp_path: Path) -> None:
    z = ZONE_OK.replace(
        "ns1: {A: 192.0.2.53}", "ns1: {A: 192.0.2.53}\n  www: {CNAME: ns1, TXT: hi}"
    )
    msg = one(tmp_path, {"z.yaml": z, "pools/p.yaml": POOL_OK})
    assert (
        "z.yaml:6:" in msg
        and "record 'www'" in msg
        and "CNAME: cannot stand beside other data (TXT)" in msg
    )


def test_cname_beside_steered_name(tmp_path: Path) -> None:
    z = ZONE_OK.replace("ns1: {A: 192.0.2.53}", "ns1: {A: 192.0.2.53}\n  dl: {CNAME: ns1}")
    msg = one(tmp_path, {"z.yaml": z, "pools/p.yaml": POOL_OK})
    assert "record 'dl'" in msg and "steered name" in msg


def test_duplicate_zones(tmp_path: Path) -> None:
    ps = problems(write(tmp_path, {"a.yaml": ZONE_OK, "b.yaml": ZONE_OK, "pools/p.yaml": POOL_OK}))
    assert len(ps) == 1 and "b.yaml:1:" in ps[0] and "already defined in " in ps[0]
    assert ps[0].endswith("a.yaml:1")


def test_dangling_pool_reference(tmp_path: Path) -> None:
    msg = one(
        tmp_path, {"z.yaml": ZONE_OK.replace("pool: p", "pool: nope"), "pools/p.yaml": POOL_OK}
    )
    assert "z.yaml:7:" in msg and "steered 'dl'" in msg and "pool: no pool named 'nope'" in msg
    assert "known pools: p" in msg


def test_out_of_zone_data(tmp_path: Path) -> None:
    z = ZONE_OK.replace(
        "ns1: {A: 192.0.2.53}", "ns1: {A: 192.0.2.53}\n  ns.other.net.: {A: 192.0.2.1}"
    )
    msg = one(tmp_path, {"z.yaml": z, "pools/p.yaml": POOL_OK})
    assert "z.yaml:6:" in msg and "'ns.other.net' is not inside zone 'example.org'" in msg


def test_missing_glue_for_in_zone_name_server(tmp_path: Path) -> None:
    z = ZONE_OK.replace("  ns1: {A: 192.0.2.53}\n", "  sub: {NS: ns.sub}\n")
    ps = problems(write(tmp_path, {"z.yaml": z, "pools/p.yaml": POOL_OK}))
    assert any("ns: name server 'ns1.example.org'" in p and "no A/AAAA (glue)" in p for p in ps)
    assert any("record 'sub' NS: name server 'ns.sub.example.org'" in p for p in ps)


def test_data_below_delegation(tmp_path: Path) -> None:
    z = ZONE_OK.replace(
        "ns1: {A: 192.0.2.53}",
        "ns1: {A: 192.0.2.53}\n  sub: {NS: ns1.example.org.}\n  www.sub: {TXT: hidden}",
    )
    msg = one(tmp_path, {"z.yaml": z, "pools/p.yaml": POOL_OK})
    assert "record 'www.sub'" in msg and "below the delegation 'sub'" in msg


def test_bad_rdata_reports_type(tmp_path: Path) -> None:
    z = ZONE_OK.replace("ns1: {A: 192.0.2.53}", 'ns1: {A: 192.0.2.53}\n  "@": {MX: "ten mail"}')
    msg = one(tmp_path, {"z.yaml": z, "pools/p.yaml": POOL_OK})
    assert "z.yaml:6:" in msg and "MX: 'ten mail' is not valid MX data" in msg


def test_mirror_field_errors_collected_at_once(tmp_path: Path) -> None:
    pool = """\
    pool: p
    fallback: [ghost]
    on_empty: maybe
    checks:
      freshness: {path: timestamp.txt, max_lag: soon}
      fall: 0
    mirrors:
      - name: m1
        url: ftp://m1.example.net/
        ipv4: [192.0.2.10]
        ipv6: ["2001:db8::zz"]
        weight: heavy
        country: Germany
        continent: XX
        location: [95, 10]
      - name: m1
        url: https://again.example.net/
        ipv4: [192.0.2.11]
      - name: m2
        url: https://m2.example.net/
    """
    ps = problems(write(tmp_path, {"z.yaml": ZONE_OK, "pools/p.yaml": pool}))
    text = "\n".join(ps)
    for needle in (
        "p.yaml:2: pool 'p': fallback: no mirror named 'ghost'",
        "p.yaml:3: pool 'p': on_empty: expected one of failopen, servfail",
        "p.yaml:5: pool 'p' checks freshness: path: 'timestamp.txt' must start with '/'",
        "max_lag: expected a positive duration",
        "p.yaml:6: pool 'p' checks: fall: 0 is out of range 1..100",
        "p.yaml:9: pool 'p' mirror 'm1': url: 'ftp://m1.example.net/' is not an http",
        "p.yaml:11: pool 'p' mirror 'm1': ipv6: '2001:db8::zz' is not an IPv6 address",
        "p.yaml:12: pool 'p' mirror 'm1': weight: expected a whole number",
        "country: 'Germany' is not a two-letter",
        "continent: 'XX' is not one of",
        "location: expected [latitude, longitude]",
        "p.yaml:16: pool 'p': mirror: duplicate mirror name 'm1'",
        "mirror 'm2': a mirror needs at least one address",
    ):
        assert needle in text, f"{needle!r} not in:\n{text}"


def test_yaml_syntax_error_and_duplicate_keys(tmp_path: Path) -> None:
    ps = problems(
        write(tmp_path, {"z.yaml": ZONE_OK + "records: {}\n", "pools/p.yaml": "pool: [unclosed\n"})
    )
    text = "\n".join(ps)
    assert "z.yaml:8: duplicate key 'records'" in text
    assert "pools/p.yaml:2: YAML syntax" in text


def test_file_kind_must_be_known(tmp_path: Path) -> None:
    ps = problems(
        write(
            tmp_path,
            {
                "z.yaml": ZONE_OK,
                "pools/p.yaml": POOL_OK,
                "junk.yaml": "hello: 1\n",
                "empty.yaml": "",
            },
        )
    )
    assert any("junk.yaml:1: expected a top-level 'zone:' or 'pool:' key" in p for p in ps)
    assert any("empty.yaml: file is empty" in p for p in ps)


def test_validate_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["validate", str(REPO / "zones")]) == 0
    assert "OK" in capsys.readouterr().out
    bad = write(
        tmp_path, {"z.yaml": ZONE_OK, "pools/p.yaml": POOL_OK.replace("192.0.2.10", "nope")}
    )
    assert cli_main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "ipv4: 'nope' is not an IPv4 address" in err and "1 problem(s)" in err


def test_auto_serial_moves_only_when_content_changes(tmp_path: Path) -> None:
    d = write(tmp_path / "c", {"z.yaml": ZONE_OK, "pools/p.yaml": POOL_OK})
    state = tmp_path / "serials.json"
    s1 = load_config(d, serial_state=state).zones[0].soa.serial
    assert load_config(d, serial_state=state).zones[0].soa.serial == s1
    (d / "z.yaml").write_text(ZONE_OK.replace("192.0.2.53", "192.0.2.54"))
    s2 = load_config(d, serial_state=state).zones[0].soa.serial
    assert s2 == s1 + 1
    # an edit to a pool file does not change the zone's data
    (d / "pools/p.yaml").write_text(POOL_OK.replace("192.0.2.10", "192.0.2.12"))
    assert load_config(d, serial_state=state).zones[0].soa.serial == s2


def test_yaml_anchors_and_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    pool = """\
    pool: p
    mirrors:
      - &base {name: m1, url: "https://m1.example.net/", ipv4: [192.0.2.10], weight: 50}
      - {<<: *base, name: m2, ipv4: [192.0.2.11]}
    """
    cfg = load_config(write(tmp_path, {"z.yaml": ZONE_OK, "pools/p.yaml": pool}))
    m2 = cfg.pools["p"].mirror("m2")
    assert (m2.weight, str(m2.ipv4[0]), m2.url) == (50, "192.0.2.11", "https://m1.example.net/")


def test_file_cache_reparses_only_changed_files_and_keeps_every_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geodns.config.loader as config_mod

    parsed: list[str] = []
    build = config_mod._build_file

    def counting(path: Path, *a: object) -> object:
        parsed.append(path.name)
        return build(path, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(config_mod, "_build_file", counting)
    d = write(tmp_path, {"z.yaml": ZONE_OK, "pools/p.yaml": POOL_OK})
    cache: config_mod.FileCache = {}
    first = load_config(d, cache=cache)
    assert sorted(parsed) == ["p.yaml", "z.yaml"] and len(cache) == 2
    parsed.clear()
    write(d, {"pools/p.yaml": POOL_OK.replace("192.0.2.10", "192.0.2.11")})
    second = load_config(d, cache=cache)
    assert parsed == ["p.yaml"]  # the zone came from the cache
    assert second.zones == first.zones and second.pools != first.pools
    assert second == load_config(d)  # the same as a load without a cache
    # cross-file checks still run on cached files: a second copy of the zone
    parsed.clear()
    write(d, {"b.yaml": ZONE_OK})
    with pytest.raises(ConfigError) as ei:
        load_config(d, cache=cache)
    assert "already defined in " in ei.value.problems[0] and parsed == ["b.yaml"]
    assert len(cache) == 2  # a failed load leaves the cache as it was
    (d / "b.yaml").unlink()
    # a broken file is never cached: its problems come back on every load
    write(d, {"pools/p.yaml": POOL_OK.replace("192.0.2.10", "192.0.2.300")})
    for _ in range(2):
        with pytest.raises(ConfigError) as ei:
            load_config(d, cache=cache)
        assert "192.0.2.300" in ei.value.problems[0]
    # a dangling reference appears when the pool goes, though the zone is cached
    (d / "pools" / "p.yaml").unlink()
    write(d, {"pools/q.yaml": POOL_OK.replace("pool: p", "pool: q")})
    with pytest.raises(ConfigError) as ei:
        load_config(d, cache=cache)
    assert "no pool named 'p'" in ei.value.problems[0]


@pytest.mark.parametrize(
    ("files", "expect"),
    [
        (  # a zone id has no meaning in DNS data; the server used to crash on it
            {"pools/p.yaml": POOL_OK, "z.yaml": zone_with("  v6: {AAAA: 'fe80::1%eth0'}\n")},
            "AAAA: 'fe80::1%eth0' is not an IPv6 address",
        ),
        (
            {"pools/p.yaml": POOL_OK, "z.yaml": zone_with("  big: {TXT: '" + "b" * 70000 + "'}\n")},
            "TXT: 70000 bytes of text: a record holds at most 65,535",
        ),
        (
            {
                "pools/p.yaml": POOL_OK,
                "z.yaml": zone_with("  a: {CNAME: [x.example.net., y.example.net.]}\n"),
            },
            "CNAME: a name has one CNAME at most",
        ),
        (
            {
                "pools/p.yaml": POOL_OK,
                "z.yaml": zone_with("  www: {A: 192.0.2.1}\n  WWW: {A: 192.0.2.2}\n"),
            },
            "record 'WWW': the same name as record 'www' on line 6; write each name once",
        ),
        (
            {
                "pools/p.yaml": POOL_OK.replace("https://m1.example.net/", "https://[::1/"),
                "z.yaml": ZONE_OK,
            },
            "url: 'https://[::1/' is not an http:// or https:// URL",
        ),
        (
            {"pools/p.yaml": POOL_OK + "checks: {timeout: .nan}\n", "z.yaml": ZONE_OK},
            "timeout: expected a positive duration",
        ),
        (
            {"pools/p.yaml": POOL_OK + "checks: {timeout: " + "9" * 400 + "}\n", "z.yaml": ZONE_OK},
            "timeout: expected a positive duration",
        ),
        (
            {
                "pools/p.yaml": POOL_OK + "checks: {apt: {suites: [bookworm, ~, [x]]}}\n",
                "z.yaml": ZONE_OK,
            },
            "suites: expected a word or path, got nothing",
        ),
        (
            {
                "pools/p.yaml": POOL_OK + 'checks: {tls: {ca_bundle: "ca\\0.pem"}}\n',
                "z.yaml": ZONE_OK,
            },
            "p.yaml: cannot use this file: ValueError",
        ),
        ({"pools/p.yaml": "pool: " + "[" * 2000 + "]" * 2000 + "\n", "z.yaml": ZONE_OK}, "p.yaml"),
    ],
)
def test_hostile_values_are_clear_errors_not_tracebacks(
    tmp_path: Path, files: dict[str, str], expect: str
) -> None:
    ps = problems(write(tmp_path, files))
    assert any(expect in x for x in ps), ps


def test_each_problem_is_listed_once_and_txt_keeps_every_character(tmp_path: Path) -> None:
    ps = problems(write(tmp_path, {"z.yaml": "zone: example.org\nsoa: {}\nns: [ns1]\n"}))
    assert len(ps) == len(set(ps)), ps
    cfg = load_config(
        write(
            tmp_path / "t",
            {"z.yaml": zone_with("  t: {TXT: '" + "a" * 254 + "éz'}\n"), "pools/p.yaml": POOL_OK},
        )
    )
    (txt,) = [rr for rr in cfg.zones[0].rrsets if rr.rtype == "TXT"]
    import dns.rdata

    rd = dns.rdata.from_text("IN", "TXT", txt.rdata[0])
    assert b"".join(rd.strings).decode() == "a" * 254 + "éz"  # nothing lost at the cut


def test_every_problem_of_a_section_in_one_run(tmp_path: Path) -> None:
    """A section with a fatal problem (no name, no mname, no max_lag) still has
    its other fields checked, so the operator fixes everything in one go."""
    zone = ZONE_OK.replace(
        "soa: {mname: ns1.example.org, rname: hostmaster.example.org}",
        "soa: {mname: [x], rname: hostmaster.example.org, refresh: -5, ttl: abc}",
    )
    pool = """\
pool: p
checks:
  freshness: {path: /t, max_lag: x, format: bogus, interval: bad}
mirrors:
  - name: m1
    url: https://m1.example.net/
    ipv4: [192.0.2.10]
  - url: ftp://x
    ipv4: [bad]
    weight: -3
"""
    ps = "\n".join(problems(write(tmp_path, {"z.yaml": zone, "pools/p.yaml": pool})))
    for field in (
        "mname",
        "refresh",
        "ttl",
        "max_lag",
        "format",
        "interval",
        "url",
        "ipv4",
        "weight",
    ):
        assert f"{field}:" in ps, (field, ps)


def test_mx_target_that_is_a_cname(tmp_path: Path) -> None:
    zone = zone_with("  mail: {CNAME: ns1.example.org.}\n  '@': {MX: '10 mail.example.org.'}\n")
    msg = one(tmp_path, {"z.yaml": zone, "pools/p.yaml": POOL_OK})
    assert "MX: target 'mail.example.org' is a CNAME" in msg and "RFC 2181" in msg


@pytest.mark.parametrize(
    ("broken", "refs"),
    [
        ("pool: p\n  bad: [\n", 2),  # YAML syntax error: the pool is not loaded
        (POOL_OK.replace("192.0.2.10", "192.0.2.300"), 0),  # a field error: it is
    ],
)
def test_a_broken_pool_file_is_the_one_problem_its_references_point_at(
    tmp_path: Path, broken: str, refs: int
) -> None:
    """The steered names that use a pool whose file failed are told why, once
    each, instead of a second, misleading 'no pool named' problem."""
    zone = ZONE_OK + "  www: {pool: p}\n"
    d = write(tmp_path, {"z.yaml": zone, "pools/p.yaml": broken})
    with pytest.raises(ConfigError) as ei:
        load_config(d)
    problems = ei.value.problems
    assert "pools/p.yaml:" in problems[0]
    found = [x for x in problems if "steered" in x]
    assert len(found) == refs and len(set(found)) == refs
    for ref in found:
        assert "pool 'p' is not loaded:" in ref and "pools/p.yaml has errors" in ref
    assert not any("no pool named" in x for x in problems)
