"""Routers of the device API."""
