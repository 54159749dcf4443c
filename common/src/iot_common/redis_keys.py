"""Redis key layout shared between services (device cache, last-seen, revocations, limits)."""

from __future__ import annotations


def device_cache(ns: str, device_id: str) -> str:
    """Hash with the ingest path's view of a device (see ``DeviceCacheEntry``)."""
    return f"{ns}:device:{device_id}"


def last_seen(ns: str) -> str:
    """Hash: field = device id, value = last-seen epoch seconds (written by the ingest bridge)."""
    return f"{ns}:last_seen"


def revoked_token(ns: str, jti: str) -> str:
    """Key present (TTL = token's remaining lifetime) while a token id is revoked."""
    return f"{ns}:revoked:{jti}"


def revocation_stream(ns: str) -> str:
    """Stream of revoked token ids; verifiers tail it so a logout takes effect everywhere fast."""
    return f"{ns}:revocations"


def rate_limit(ns: str, scope: str, ident: str) -> str:
    return f"{ns}:ratelimit:{scope}:{ident}"
