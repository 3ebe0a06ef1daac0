"""Durable storage: SQLite with one group-commit writer, numbered migrations, read helpers."""
