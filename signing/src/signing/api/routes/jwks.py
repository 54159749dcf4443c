"""Public keys (JWKS) that verify this service's tokens."""

from __future__ import annotations

from fastapi import APIRouter, Response

from signing.api.deps import StateDep

router = APIRouter()


@router.get(
    "/.well-known/jwks.json",
    tags=["keys"],
    summary="Public keys that verify this service's tokens",
)
async def jwks(state: StateDep, response: Response) -> dict[str, list[dict[str, str]]]:
    # The current key, the next one (published before it signs) and the recently retired ones.
    # Verifiers refetch on an unknown kid anyway; a cache shorter than the publication lead
    # keeps a rotation visible in time.
    response.headers["Cache-Control"] = "public, max-age=30"
    return {"keys": state.keys.published()}
