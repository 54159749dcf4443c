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
    # Verifiers refetch on an unknown kid anyway; a short cache keeps rotations visible.
    response.headers["Cache-Control"] = "public, max-age=300"
    return {"keys": [state.key.public_jwk()]}
