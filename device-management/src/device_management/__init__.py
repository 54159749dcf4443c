"""device-management."""
