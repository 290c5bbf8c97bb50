"""Where a client is (GeoIP) and which mirrors are nearest to it (ranking)."""
