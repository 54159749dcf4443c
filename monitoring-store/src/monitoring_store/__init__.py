"""monitoring-store."""
