"""DNSSEC for geodns: keys, signing at table-build time, compact denial.

- `model`: the frozen policy and key material a zone's `dnssec:` YAML becomes.
- `zoneconf`: parsing that YAML key, and loading and checking the key files.
- `keyfiles`: BIND `K<zone>.+013+<tag>.key/.private` files, read and written.
- `signer`: `ZoneSigner` — RRSIGs for a zone's RRsets, made when the tables
  are built (steered variants and names that do not exist: when first encoded,
  then cached), and the RFC 9824 NSEC records of compact denial.
- `sections`: the DO=1 form of an encoded answer (RRSIGs beside each RRset,
  NSEC in negative answers, DS or its denial in referrals).
- `cli`: `geodns dnssec keygen|ds`.
"""
