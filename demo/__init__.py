"""The demo: MaxMind-format test databases, HTTPS demo mirrors on loopback, and `geodns-demo`."""
