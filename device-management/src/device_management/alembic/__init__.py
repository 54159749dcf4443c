"""Alembic environment of device-management (run through ``device_management.migrations``)."""
