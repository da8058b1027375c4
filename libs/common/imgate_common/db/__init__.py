"""Relational state: models, engine, migrations."""
