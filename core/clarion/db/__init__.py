"""Postgres access: pool factory, schema migrations and the queries the components share."""

from clarion.db.migrations import apply_migrations
from clarion.db.pool import create_pool

__all__ = ["apply_migrations", "create_pool"]
