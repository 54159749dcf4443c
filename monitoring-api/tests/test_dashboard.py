"""The dashboard in headless Chromium: sign in, see why a reading was refused, watch a chart
update, acknowledge an alert."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from playwright.async_api import Browser, async_playwright, expect

from iot_common.events import Alert, WindowStats, json_encoder
from iot_common.telemetry import DeadLetter
from monitoring_api.config import STATIC_DIR
from monitoring_store.base import deadletter_record

CHROMIUM = os.environ.get("IOT_TEST_CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and (STATIC_DIR / "index.html").exists()),
    reason="needs Debian's chromium and the built dashboard (scripts/test.d/20-dashboard.sh)",
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        await b.close()


def window(device: str, metric: str, start: float, mean: float) -> WindowStats:
    return WindowStats(
        device_id=device,
        metric=metric,
        window_seconds=10,
        window_start=start,
        count=10,
        min=mean - 1,
        max=mean + 1,
        mean=mean,
        stddev=0.4,
        p50=mean,
        p95=mean + 0.8,
        last=mean,
        last_ts=start + 9.5,
        final=True,
        updated_at=time.time(),
    )


def make_alert(device: str, owner: str, message: str, severity: str = "critical") -> Alert:
    now = time.time()
    return Alert(
        alert_id=str(uuid.uuid4()),
        device_id=device,
        rule_id=f"rule-{uuid.uuid4().hex[:4]}",
        rule_type="threshold",
        severity=severity,
        status="active",
        message=message,
        started_at=now,
        updated_at=now,
        owner_id=owner,
    )


async def test_sign_in_live_chart_and_acknowledge(
    browser: Browser,
    app_factory: Any,
    make_user: Any,
    registry: Any,
    signing: Any,
    store: Any,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    alice, password = await signing.add_user("operator")
    bob = make_user("operator")
    dev = await registry.add(alice, metrics=["temp", "hum"], name="boiler-room")
    await registry.add(bob, name="bobs-device")
    stored_alert = make_alert(dev, alice.id, "temp above 80 for 3 windows")
    await store.upsert_alerts([stored_alert])
    app = await app_factory(serve=True, signing_http=signing.client())

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)
    await page.goto(f"{app.url}/dashboard")

    # A wrong password is refused; the right one signs in.
    await page.fill("#email", alice.email)
    await page.fill("#password", "wrong")
    await page.click("#sign-in")
    await expect(page.get_by_test_id("login-error")).to_contain_text("Wrong email or password")
    await page.fill("#password", password)
    await page.click("#sign-in")
    await expect(page.get_by_test_id("user-email")).to_have_text(alice.email)
    await expect(page.get_by_test_id("live-status")).to_have_text("live")

    # Only alice's device is listed, with its status.
    rows = page.locator("#devices tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("boiler-room")
    await expect(rows.first).to_contain_text("online")

    # Choose it: its refused readings say why, and the chart fills from windows arriving over
    # Kafka → Socket.IO.
    refused = DeadLetter(
        reason="non_finite",
        source="mqtt",
        payload=b'{"ts": 1, "metrics": {"temp": 1e999}}',
        ts=time.time() - 60,
        device_id=dev,
        detail="metric 'temp' is not finite",
    )
    kept = deadletter_record(refused, id=f"dashboard-test/{dev}")
    assert kept is not None
    await store.insert_deadletters([kept])
    await rows.first.click()
    await expect(page.get_by_test_id("chart-device")).to_contain_text("boiler-room")
    refused_item = page.get_by_test_id("refused-reading")
    await expect(refused_item).to_have_count(1)
    await expect(refused_item).to_contain_text("non_finite")
    await expect(refused_item).to_contain_text("metric 'temp' is not finite")
    await expect(refused_item).to_contain_text('"temp": 1e999')
    chart = page.get_by_test_id("chart")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    await producer.start()
    try:
        t0 = (time.time() // 10) * 10 - 300
        deadline = time.monotonic() + 20
        i = 0
        while time.monotonic() < deadline:
            for metric, base in (("temp", 70.0), ("hum", 40.0)):
                await producer.send_and_wait(
                    f"{topic_prefix}stats.windows",
                    json_encoder.encode(window(dev, metric, t0 + 10 * i, base + i)),
                    key=dev.encode(),
                )
            i += 1
            points = int(await chart.get_attribute("data-points") or 0)
            if points >= 5:
                break
            await asyncio.sleep(0.1)
        assert int(await chart.get_attribute("data-points") or 0) >= 5
        assert await chart.get_attribute("data-metrics") == "hum,temp"
        await expect(chart.locator("canvas")).to_have_count(1)
        # Windows still in flight when the loop stopped land first: the chart settles on one
        # point per window start sent, then the next window adds exactly one.
        await expect(chart).to_have_attribute("data-points", str(i))
        before = i
        await producer.send_and_wait(
            f"{topic_prefix}stats.windows",
            json_encoder.encode(window(dev, "temp", t0 + 10 * (i + 5), 99.0)),
            key=dev.encode(),
        )
        await expect(chart).to_have_attribute("data-points", str(before + 1))
        await expect(page.get_by_test_id("chart-last")).to_contain_text("temp: 99")

        # The stored alert is in the feed; a new one arrives live.
        feed = page.get_by_test_id("alerts")
        await expect(feed).to_contain_text("temp above 80 for 3 windows")
        live_alert = make_alert(dev, alice.id, "humidity sensor silent", "warning")
        await store.upsert_alerts([live_alert])
        await producer.send_and_wait(
            f"{topic_prefix}alerts", json_encoder.encode(live_alert), key=dev.encode()
        )
        await expect(feed).to_contain_text("humidity sensor silent")
    finally:
        await producer.stop()

    # Acknowledge the stored alert from its button.
    item = page.locator(f'#alerts li[data-alert-id="{stored_alert.alert_id}"]')
    await item.get_by_role("button", name="Acknowledge").click()
    await expect(item).to_have_attribute("data-status", "acknowledged")
    await expect(item.get_by_role("button", name="Acknowledge")).to_have_count(0)
    acked = await store.get_alert(stored_alert.alert_id)
    assert acked.status == "acknowledged" and acked.acknowledged_by == alice.id

    # Fleet figures are shown (pushed over the fleet room).
    await expect(page.get_by_test_id("fleet-devices")).not_to_have_text("–")
    if shot := os.environ.get("IOT_TEST_SCREENSHOT"):
        await page.screenshot(path=shot, full_page=True)
    await page.close()


async def test_time_range_shows_a_day_of_five_metrics_with_bands(
    browser: Browser, app_factory: Any, signing: Any, registry: Any, store: Any, store_url: str
) -> None:
    """24 h of 1-minute windows for 5 metrics: the 24 h range draws 5-minute buckets (mean
    line, min–max band per metric); the time from choosing the range to the chart is printed
    (the figure in benchmarks/RESULTS.md)."""
    if store_url.startswith("mongodb"):
        # Measured 2026-12-02: on the tests' MongoDB emulator GET /monitoring/data for this day
        # (7,200 windows) did not answer within 20 s (PostgreSQL: under 1 s). Left to the
        # store work of issue 15; the range picker itself does not depend on the backend.
        pytest.skip("24 h aggregation on the MongoDB emulator does not answer within 20 s")
    alice, password = await signing.add_user("operator")
    metrics = ["m1", "m2", "m3", "m4", "m5"]
    dev = await registry.add(alice, metrics=metrics, name="day-device")
    end = (time.time() // 300) * 300
    day = [
        WindowStats(
            **{**_asdict(window(dev, m, end - 86_400 + 60 * k, 20.0 + k % 7)), "window_seconds": 60}
        )
        for m in metrics
        for k in range(1440)
    ]
    await store.upsert_windows(day)
    app = await app_factory(serve=True, signing_http=signing.client())
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(20_000)
    await page.goto(f"{app.url}/dashboard")
    await page.fill("#email", alice.email)
    await page.fill("#password", password)
    await page.click("#sign-in")
    await page.locator("#devices tbody tr").first.click()
    chart = page.get_by_test_id("chart")
    await expect(chart).to_have_attribute("data-range", "live")
    started = time.perf_counter()
    await page.select_option("#range", "24h")
    await expect(chart).to_have_attribute("data-range", "24h")
    took = time.perf_counter() - started
    points = int(await chart.get_attribute("data-points") or 0)
    assert 287 <= points <= 289  # 5-minute buckets over the day
    assert await chart.get_attribute("data-metrics") == ",".join(metrics)
    assert await chart.get_attribute("data-bands") == "5"
    print(f"\n24 h range, 5 metrics, {points} buckets: chart in {took * 1000:.0f} ms")
    # back to 1 h: 1-minute buckets
    await page.select_option("#range", "1h")
    await expect(chart).to_have_attribute("data-range", "1h")
    assert 54 <= int(await chart.get_attribute("data-points") or 0) <= 61  # 5-min-aligned data
    await page.close()


def _asdict(w: WindowStats) -> dict[str, Any]:
    return {f: getattr(w, f) for f in w.__struct_fields__}
