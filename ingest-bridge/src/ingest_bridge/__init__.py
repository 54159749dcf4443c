"""ingest-bridge."""
