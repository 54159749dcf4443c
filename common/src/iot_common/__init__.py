"""Shared library for the platform's services: settings, logging, errors, auth and contracts."""
