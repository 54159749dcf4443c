"""HTTP API of device-management."""
