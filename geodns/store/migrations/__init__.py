"""Alembic migrations for the health store (run by `geodns.store.Store`)."""
