"""Sign-in relayed to signing, on behalf of the dashboard (served from this origin)."""

from __future__ import annotations

from typing import Any

import httpx

from iot_common.errors import ServiceUnavailable, TooManyRequests, Unauthorized
from monitoring_api.schemas import SessionCreate


async def sign_in(
    *, http: httpx.AsyncClient, body: SessionCreate, forwarded_for: str
) -> dict[str, Any]:
    """Signing's ``POST /users/auth`` answer for these credentials.

    ``forwarded_for`` names the client (``proxies.forwarded_chain``): signing limits failed
    sign-ins per client address, and without it every dashboard user would share this API's.
    Signing's refusals are passed on without saying which part was wrong.
    """
    try:
        resp = await http.post(
            "/users/auth", json=body.model_dump(), headers={"X-Forwarded-For": forwarded_for}
        )
    except httpx.HTTPError as exc:
        raise ServiceUnavailable("signing is unreachable") from exc
    if resp.status_code in (400, 401, 403, 404, 422):
        raise Unauthorized("wrong email or password")
    if resp.status_code == 429:
        raw = resp.headers.get("retry-after", "")
        retry_after = int(raw) if raw.isdigit() else 60
        raise TooManyRequests("too many sign-in attempts", retry_after=retry_after)
    if resp.status_code != 200:
        raise ServiceUnavailable("signing did not answer")
    answer: dict[str, Any] = resp.json()
    return answer
