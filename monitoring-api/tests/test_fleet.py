"""GET /monitoring/fleet: the caller's devices sorted over all of them (not one page), paged."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np


async def _pages(client: Any, headers: dict[str, str], size: int, **params: Any) -> list[Any]:
    items: list[Any] = []
    offset: int | None = 0
    while offset is not None:
        r = await client.get(
            "/monitoring/fleet", params={**params, "limit": size, "offset": offset}, headers=headers
        )
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        offset = body["next_offset"]
    return items


async def test_sorted_by_a_metrics_last_value_across_every_page(
    app_factory: Any, registry: Any, make_user: Any, store_readings: Any
) -> None:
    alice, bob = make_user("operator"), make_user("operator")
    names = [f"dev-{i:02d}" for i in range(45)]
    ids = list(
        await asyncio.gather(
            *(
                registry.add(alice, name=n, metrics=["temp"], online=i % 3 != 0)
                for i, n in enumerate(names)
            )
        )
    )
    theirs = await registry.add(bob, name="dev-bob", metrics=["temp"])
    # 30 devices send temp (an older reading, then the newest); the other 15 send none.
    rng = np.random.default_rng(14)
    temps = {d: round(float(v), 2) for d, v in zip(ids[:30], rng.normal(20, 8, 30), strict=True)}
    now = time.time()
    sending = [*temps, theirs]
    await store_readings(
        [(d, "temp", now - 20, 0.0) for d in sending]
        + [(d, "temp", now - 10, v) for d, v in zip(sending, [*temps.values(), 999.0], strict=True)]
    )
    app = await app_factory(kafka_enabled=False)
    name_of = dict(zip(ids, names, strict=True))
    without = sorted(ids[30:], key=name_of.__getitem__)

    for order, sign in (("desc", -1), ("asc", 1)):
        listed = await _pages(app.client, alice.headers, 20, sort="m:temp", order=order)
        expected = sorted(temps, key=lambda d: (sign * temps[d], name_of[d])) + without
        assert [d["id"] for d in listed] == expected  # every page in one global order
        first = listed[0]
        top = max(temps.values()) if order == "desc" else min(temps.values())
        assert first["latest"]["temp"]["value"] == top
        assert first["name"] == name_of[first["id"]]
        assert all(d["latest"] == {} for d in listed[30:])  # no temp: last either way

    r = await app.client.get(
        "/monitoring/fleet",
        params={"sort": "m:temp", "order": "desc", "limit": 20},
        headers=alice.headers,
    )
    body = r.json()
    assert (body["total"], body["next_offset"], len(body["items"])) == (45, 20, 20)
    assert theirs not in {d["id"] for d in body["items"]}  # bob's 999 is not alice's to see

    # Device fields, over all devices too; ties and devices without the key in name order.
    by_name = await _pages(app.client, alice.headers, 20, sort="name", order="desc")
    assert [d["name"] for d in by_name] == sorted(names, reverse=True)
    by_status = await _pages(app.client, alice.headers, 20, sort="status")
    assert [d["status"] for d in by_status] == ["online"] * 30 + ["never_seen"] * 15
    assert [d["name"] for d in by_status[:3]] == ["dev-01", "dev-02", "dev-04"]
    r = await app.client.get(
        "/monitoring/fleet", params={"q": "DEV-4", "sort": "m:temp"}, headers=alice.headers
    )
    assert [d["name"] for d in r.json()["items"]] == [f"dev-4{i}" for i in range(5)]
    assert r.json()["total"] == 5

    for bad in ({"sort": "m:bad name"}, {"sort": "colour"}, {"order": "up"}, {"limit": 5000}):
        r = await app.client.get("/monitoring/fleet", params=bad, headers=alice.headers)
        assert r.status_code == 422, (bad, r.text)
