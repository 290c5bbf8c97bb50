"""Wire format, zone tables and the per-query answer path (bytes in, bytes out)."""
