"""Alembic environment for the geodns store.

`geodns.store.Store` runs this programmatically with an open connection in
`config.attributes["connection"]`. For hand use (new revisions):
    alembic -c geodns/store/migrations/alembic.ini -x url=sqlite:///tmp/x.sqlite revision \
        --autogenerate -m "what changed"
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from geodns.store import expected  # noqa: F401  (its tables join Base.metadata)
from geodns.store.schema import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("GEODNS_STORE")
    if not url:
        raise SystemExit("give the database: alembic ... -x url=SQLALCHEMY_URL (or GEODNS_STORE)")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


main()
