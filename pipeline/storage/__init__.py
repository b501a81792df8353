"""Persistence: the SQLAlchemy models, the database connection and the embedded PostgreSQL."""
