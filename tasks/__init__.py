"""Prefect tasks: thin wrappers that add caching, retries and lineage around one library call each."""
