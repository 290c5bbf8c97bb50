"""Per-address probes: TLS, freshness, objects and apt consistency."""
