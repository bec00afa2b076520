"""Backends for each role, opened from a URL (see DESIGN.md, "Roles and backends")."""
