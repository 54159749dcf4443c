"""monitoring-api."""
