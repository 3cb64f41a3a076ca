"""Prefect flows: entry points that compose tasks (see ``plm --help``)."""
