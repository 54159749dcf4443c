"""Device registration through device-management (and the admin login at signing).

Each simulated device is created with its type's config (metrics and alert rules from the fleet
file) and given a token (``POST /devices/{id}/credentials``). What was registered is saved to a
devices file, so a later run with ``--reuse-devices`` publishes as the same devices (tokens are
shown only once, so they cannot be fetched again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from simulator.fleet import Fleet
from simulator.publisher import Device

log = logging.getLogger(__name__)


class RegistrationError(RuntimeError):
    """The platform refused or could not be reached while registering devices."""


def device_names(fleet: Fleet, tag: str | None) -> list[tuple[int, int, str]]:
    """(type index, index within type, name) of every device, in fleet order."""
    out = []
    for ti, dtype in enumerate(fleet.device_types):
        width = max(4, len(str(dtype.count - 1)))
        for i in range(dtype.count):
            name = f"{fleet.name}-{dtype.name}-{i:0{width}d}"
            out.append((ti, i, f"{name}-{tag}" if tag else name))
    return out


def local_devices(fleet: Fleet, seed: int) -> list[Device]:
    """Devices with deterministic ids and no tokens (``--no-register``: pure load generation)."""
    return [
        Device(
            index=n,
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"simulator/{fleet.name}/{seed}/{name}")),
            type_index=ti,
            type_device_index=i,
        )
        for n, (ti, i, name) in enumerate(device_names(fleet, None))
    ]


async def login(client: httpx.AsyncClient, signing_url: str, email: str, password: str) -> str:
    try:
        resp = await client.post(
            f"{signing_url.rstrip('/')}/users/auth", json={"email": email, "password": password}
        )
    except httpx.HTTPError as exc:
        raise RegistrationError(f"cannot reach signing at {signing_url}: {exc}") from exc
    if resp.status_code != 200:
        raise RegistrationError(f"login as {email} failed: {resp.status_code} {resp.text[:200]}")
    return str(resp.json()["access_token"])


async def register_devices(
    fleet: Fleet,
    *,
    signing_url: str,
    device_management_url: str,
    email: str,
    password: str,
    tag: str,
    concurrency: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Device]:
    """Create every device of the fleet with its config, and a token for each."""
    names = device_names(fleet, tag)
    configs = [t.device_config().model_dump(mode="json") for t in fleet.device_types]
    base = device_management_url.rstrip("/")
    async with httpx.AsyncClient(timeout=30.0) as client:
        token = await login(client, signing_url, email, password)
        headers = {"Authorization": f"Bearer {token}"}
        sem = asyncio.Semaphore(concurrency)
        done = 0

        async def one(n: int, ti: int, i: int, name: str) -> Device:
            nonlocal done
            body = {"name": name, "type": fleet.device_types[ti].name, "config": configs[ti]}
            async with sem:
                resp = await client.post(f"{base}/devices/", json=body, headers=headers)
                if resp.status_code not in (200, 201):
                    raise RegistrationError(
                        f"creating device {name} failed: {resp.status_code} {resp.text[:300]}"
                    )
                device_id = str(resp.json()["id"])
                cred = await client.post(f"{base}/devices/{device_id}/credentials", headers=headers)
                if cred.status_code not in (200, 201):
                    raise RegistrationError(
                        f"credentials for {name} failed: {cred.status_code} {cred.text[:300]}"
                    )
            done += 1
            if on_progress is not None:
                on_progress(done, len(names))
            return Device(
                index=n,
                id=device_id,
                type_index=ti,
                type_device_index=i,
                token=str(cred.json()["token"]),
            )

        try:
            return list(
                await asyncio.gather(
                    *(one(n, ti, i, name) for n, (ti, i, name) in enumerate(names))
                )
            )
        except httpx.HTTPError as exc:
            raise RegistrationError(
                f"cannot reach device-management at {device_management_url}: {exc}"
            ) from exc


async def devices_exist(
    devices: list[Device],
    *,
    signing_url: str,
    device_management_url: str,
    email: str,
    password: str,
    concurrency: int = 16,
) -> bool:
    """Whether device-management still knows every saved device (a reset database forgets)."""
    base = device_management_url.rstrip("/")
    async with httpx.AsyncClient(timeout=30.0) as client:
        token = await login(client, signing_url, email, password)
        headers = {"Authorization": f"Bearer {token}"}
        sem = asyncio.Semaphore(concurrency)

        async def one(device: Device) -> bool:
            async with sem:
                resp = await client.get(f"{base}/devices/{device.id}", headers=headers)
            return resp.status_code == 200

        try:
            return all(await asyncio.gather(*(one(d) for d in devices)))
        except httpx.HTTPError as exc:
            raise RegistrationError(
                f"cannot reach device-management at {device_management_url}: {exc}"
            ) from exc


def save_devices(path: Path, fleet: Fleet, devices: list[Device]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "fleet": fleet.name,
        "types": [[t.name, t.count] for t in fleet.device_types],
        "devices": [
            {
                "id": d.id,
                "type_index": d.type_index,
                "type_device_index": d.type_device_index,
                "token": d.token,
            }
            for d in devices
        ],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.chmod(0o600)  # device tokens
    tmp.replace(path)


def load_devices(path: Path, fleet: Fleet) -> list[Device] | None:
    """The devices saved for this fleet, or None when the file is missing or for another fleet."""
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("fleet") != fleet.name or data.get("types") != [
        [t.name, t.count] for t in fleet.device_types
    ]:
        log.warning("%s was saved for another fleet layout; registering anew", path)
        return None
    return [
        Device(
            index=n,
            id=d["id"],
            type_index=d["type_index"],
            type_device_index=d["type_device_index"],
            token=d.get("token"),
        )
        for n, d in enumerate(data["devices"])
    ]


def default_devices_file(fleet: Fleet) -> Path:
    return Path.home() / ".cache" / "iot-simulator" / f"{fleet.name}-devices.json"
