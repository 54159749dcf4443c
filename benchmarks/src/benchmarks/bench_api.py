"""Monitoring API benchmark: query latency over HTTP and Kafka → Socket.IO push latency.

1. Query latency. A PostgreSQL monitoring store holding ≥ 10,000,000 windows across 100
   devices × 5 metrics (8 days of 1-minute windows + 24 h of 10-second windows, loaded with the
   store benchmark's binary-COPY loader). The monitoring API runs as its own process (uvicorn,
   as deployed); one client sends ``GET /monitoring/data/{device}?interval=1m`` for a random
   device and a random 24-hour range, one request at a time, with a user token (verified by the
   API, ownership answered by a device-management stand-in and cached). Reported: p50/p99 for
   all 5 metrics with every aggregate (the issue's figure, target p99 ≤ 50 ms) and for one
   metric's mean (a chart's request); baseline in the same run: the same queries straight
   against the store (``aggregate_window_series``), so the API's own cost is visible.
2. Push latency. 1,000 Socket.IO clients (WebSocket, spread over 4 client processes) connect
   to the API with a token and join one device's room. The benchmark produces window records
   to ``stats.windows`` on a Tansu broker; each carries its production time, and every client
   records receive time − production time. Reported: p50/p99 over all deliveries (target
   p99 ≤ 250 ms), and how many of the expected deliveries arrived.

Run: ``uv run python -m benchmarks.bench_api`` (``--quick`` for a small store and 200 clients).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import pathlib
import secrets
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import asyncpg
import httpx
import jwt
import numpy as np
import psutil
from cryptography.hazmat.primitives.asymmetric import rsa

from benchmarks.bench_store import T0, _load_big
from iot_common.events import WindowStats, json_encoder
from iotctl.broker import TansuBroker, free_port
from iotctl.testinfra import (
    create_database,
    database_url,
    drop_database,
    percentiles,
    stop_process,
)
from monitoring_store import open_store

DB_NAME = "iot_bench_api"
KID = "bench-api-key"


# -- identity and device-management stand-ins ----------------------------------------------------
def _b64(n: int) -> str:
    return (
        base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
    )


class Stubs:
    """JWKS and device-management's read API for one admin user, served from a thread."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = int(time.time())
        self.user_id = str(uuid.uuid4())
        self.token = jwt.encode(
            {
                "sub": self.user_id,
                "email": "bench@example.com",
                "role": "admin",
                "iat": now,
                "exp": now + 6 * 3600,
                "jti": secrets.token_hex(8),
                "iss": "iot-signing",
                "aud": "iot-platform",
            },
            self.key,
            algorithm="RS256",
            headers={"kid": KID},
        )
        self.port = free_port()
        self._server: Any = None

    def start(self) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        pub = self.key.public_key().public_numbers()
        jwks = {
            "keys": [
                {
                    "kty": "RSA",
                    "kid": KID,
                    "alg": "RS256",
                    "use": "sig",
                    "n": _b64(pub.n),
                    "e": _b64(pub.e),
                }
            ]
        }

        async def keys(_: Request) -> JSONResponse:
            return JSONResponse(jwks)

        async def device(request: Request) -> JSONResponse:
            did = request.path_params["device_id"]
            return JSONResponse(
                {
                    "id": did,
                    "name": did[:8],
                    "type": "sensor",
                    "owner_id": self.user_id,
                    "config": {"metrics": [], "rules": []},
                    "status": "online",
                    "active": True,
                }
            )

        app = Starlette(
            routes=[
                Route("/.well-known/jwks.json", keys),
                Route("/devices/{device_id}", device),
                Route("/internal/devices/{device_id}", device),
            ]
        )
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        threading.Thread(target=self._server.run, daemon=True).start()
        for _ in range(200):
            if self._server.started:
                return
            time.sleep(0.02)
        raise RuntimeError("stub server did not start")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _start_api(
    stubs: Stubs, store_url: str, bootstrap: str, prefix: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "MONITORING_STORE_URL": store_url,
        "IOT_JWKS_URL": f"{stubs.url}/.well-known/jwks.json",
        "IOT_DEVICE_MANAGEMENT_URL": stubs.url,
        "IOT_KAFKA_BOOTSTRAP": bootstrap,
        "IOT_TOPIC_PREFIX": prefix,
        "IOT_REDIS_NAMESPACE": f"bench-{secrets.token_hex(3)}",
        "IOT_LOG_LEVEL": "WARNING",
        "MONITORING_API_DEVICE_CACHE_TTL": "3600",
        "MONITORING_API_FLEET_PUSH_INTERVAL": "3600",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitoring_api",
            "serve",
            "--port",
            str(port),
            "--workers",
            os.environ.get("BENCH_API_WORKERS", "1"),
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("monitoring-api exited during startup")
        try:
            r = httpx.get(f"{url}/health", timeout=1)
            if r.status_code == 200 and r.json().get("kafka") == "ok":
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("monitoring-api did not become healthy")


# -- 1. query latency ----------------------------------------------------------------------
async def _bench_queries(
    url: str,
    store_url: str,
    token: str,
    devices: list[str],
    *,
    days: int,
    iterations: int,
    server: psutil.Process,
) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    span_min = days * 1440

    def pick() -> tuple[str, float]:
        d = devices[int(rng.integers(0, len(devices)))]
        return d, T0 + 60.0 * int(rng.integers(0, span_min - 1440 + 1))

    kinds: dict[str, dict[str, str]] = {
        "http_24h_1m_all_metrics": {"interval": "1m"},
        "http_24h_1m_all_metrics_columns": {"interval": "1m", "layout": "columns"},
        "http_24h_1m_one_metric_mean": {
            "interval": "1m",
            "metric": "temperature",
            "aggregate": "mean",
        },
    }
    out: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        for name, params in kinds.items():
            lat: list[float] = []
            points = size = 0
            cpu_before = 0.0
            for i in range(iterations + 10):
                if i == 10:
                    cpu_before = _cpu_seconds(server)
                d, start = pick()
                q: dict[str, str | float] = {**params, "start": start, "end": start + 86400 - 1}
                t = time.perf_counter()
                r = await client.get(f"/monitoring/data/{d}", params=q)
                ms = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                if i >= 10:
                    lat.append(ms)
                    body = r.json()
                    points = sum(
                        len(s["points"]) if "points" in s else len(s["columns"]["t"])
                        for s in body["series"]
                    )
                    size = len(r.content)
            # The API process's own CPU per request (not counting PostgreSQL's share).
            api_cpu_ms = (_cpu_seconds(server) - cpu_before) / iterations * 1000
            out[name] = {
                **percentiles(lat, unit="_ms"),
                "points_returned": points,
                "response_bytes": size,
                "api_cpu_ms_per_request": round(api_cpu_ms, 2),
            }
    # Baseline: the same store call the API makes, without HTTP, auth or JSON.
    store = open_store(store_url, max_pool=2)
    await store.start()
    try:
        for name, metrics in (
            ("store_24h_1m_all_metrics", None),
            ("store_24h_1m_one_metric", ["temperature"]),
        ):
            lat = []
            for i in range(iterations + 10):
                d, start = pick()
                t = time.perf_counter()
                await store.aggregate_window_series(
                    d,
                    metrics=metrics,
                    start=start,
                    end=start + 86400 - 1,
                    bucket_seconds=60,
                    source_window_seconds=60,
                )
                if i >= 10:
                    lat.append((time.perf_counter() - t) * 1000)
            out[name] = percentiles(lat, unit="_ms")
    finally:
        await store.close()
    return out


# -- 2. push latency -----------------------------------------------------------------------
def _client_worker(
    url: str, token: str, device: str, n: int, ready: Any, go: Any, results: Any, expected: int
) -> None:
    asyncio.run(_client_main(url, token, device, n, ready, go, results, expected))


async def _client_main(
    url: str, token: str, device: str, n: int, ready: Any, go: Any, results: Any, expected: int
) -> None:
    import socketio

    lat: list[float] = []
    clients: list[Any] = []
    done = asyncio.Event()
    received = 0

    def on_window(data: dict[str, Any]) -> None:
        nonlocal received
        lat.append((time.time() - data["updated_at"]) * 1000)
        received += 1
        if received >= expected * n:
            done.set()

    async def one() -> None:
        c = socketio.AsyncClient(reconnection=False)
        c.on("window", on_window)
        await c.connect(
            url,
            socketio_path="/ws/monitoring",
            auth={"token": token},
            transports=["websocket"],
            wait_timeout=30,
        )
        ack = await c.call("join", {"device_id": device}, timeout=30)
        assert ack["ok"], ack
        clients.append(c)

    for i in range(0, n, 25):
        await asyncio.gather(*(one() for _ in range(min(25, n - i))))
    ready.release()
    # `go` is a multiprocessing event: wait for it off the event loop.
    await asyncio.to_thread(go.wait)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout=expected * 0.5 + 30)
    results.put(lat)
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)


async def _produce(bootstrap: str, topic: str, device: str, pushes: int, interval: float) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        for i in range(pushes):
            now = time.time()
            w = WindowStats(
                device_id=device,
                metric="temperature",
                window_seconds=10,
                window_start=now // 10 * 10,
                count=10 + i,
                min=1.0,
                max=2.0,
                mean=1.5,
                stddev=0.1,
                p50=1.5,
                p95=1.9,
                last=1.7,
                last_ts=now,
                final=False,
                updated_at=now,
            )
            await producer.send_and_wait(topic, json_encoder.encode(w), key=device.encode())
            await asyncio.sleep(interval)
    finally:
        await producer.stop()


def _bench_push(
    url: str,
    token: str,
    bootstrap: str,
    prefix: str,
    *,
    clients: int,
    pushes: int,
    procs: int,
    server: psutil.Process,
) -> dict[str, Any]:
    device = str(uuid.uuid4())
    ctx = mp.get_context("spawn")
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    results = ctx.Queue()
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = [
        ctx.Process(target=_client_worker, args=(url, token, device, n, ready, go, results, pushes))
        for n in per
    ]
    t = time.perf_counter()
    for w in workers:
        w.start()
    for _ in workers:
        if not ready.acquire(timeout=300):
            raise RuntimeError("Socket.IO clients did not connect in time")
    connect_s = time.perf_counter() - t
    cpu_before = _cpu_seconds(server)
    go.set()
    time.sleep(0.5)
    asyncio.run(_produce(bootstrap, f"{prefix}stats.windows", device, pushes, 0.2))
    lat: list[float] = []
    for _ in workers:
        lat.extend(results.get(timeout=120))
    cpu = _cpu_seconds(server) - cpu_before
    for w in workers:
        w.join(timeout=30)
    return {
        **percentiles(lat, unit="_ms"),
        "clients": clients,
        "client_processes": procs,
        "pushes": pushes,
        "deliveries_expected": clients * pushes,
        "deliveries_received": len(lat),
        "connect_and_join_s": round(connect_s, 1),
        # CPU the API spent during the push phase (including its clients' keep-alive pings).
        "server_cpu_s": round(cpu, 2),
        "server_cpu_us_per_delivery": round(cpu / max(1, len(lat)) * 1e6, 1),
        "latencies_ms": lat,
    }


def _cpu_seconds(p: psutil.Process) -> float:
    procs = [p, *p.children(recursive=True)]
    total = 0.0
    for q in procs:
        with contextlib.suppress(psutil.Error):
            t = q.cpu_times()
            total += t.user + t.system
    return total


def _server_push_delay(url: str) -> dict[str, Any]:
    """Server-side share: Kafka timestamp → queued to every client (histogram bucket bounds)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith("monitoring_api_push_delay_seconds_bucket") and "stats.windows" in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append(
                (float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1]))
            )
    if not buckets or buckets[-1][1] == 0:
        return {}
    total = buckets[-1][1]

    def bound(q: float) -> float:
        return next(le for le, c in buckets if c >= q * total) * 1000

    return {"records": int(total), "p50_le_ms": bound(0.5), "p99_le_ms": bound(0.99)}


def _plot(results_dir: pathlib.Path, queries: dict[str, Any], push: dict[str, Any]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    lat = np.sort(np.asarray(push["latencies_ms"]))
    if len(lat):
        ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=f"{push['clients']} clients")
    ax.axvline(250, color="grey", linestyle="--", linewidth=1, label="250 ms target")
    ax.set_xlabel("Kafka → Socket.IO client latency (ms)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title("monitoring-api push latency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = results_dir / "bench_api_push_latency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


async def _load(store_url: str, quick: bool) -> dict[str, Any]:
    store = open_store(store_url, max_pool=2)
    await store.start()  # creates the tables
    conn = await asyncpg.connect(store_url)
    try:
        return await _load_big(
            store, conn, n_devices=100, days_1m=2 if quick else 8, hours_10s=1 if quick else 24
        )
    finally:
        await conn.close()
        await store.close()


def run(results_dir: pathlib.Path, *, quick: bool = False) -> dict[str, Any]:
    """Run the monitoring API benchmark (see the module docstring)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    keep = os.environ.get("BENCH_API_KEEP") == "1"
    store_url = database_url(DB_NAME)
    days = 2 if quick else 8
    reuse = keep and os.environ.get("BENCH_API_REUSE") == "1"
    parts = os.environ.get("BENCH_API_PARTS", "queries,push").split(",")
    devices: list[str]
    load: dict[str, Any]
    if "queries" not in parts:
        # Pushes need no stored data: an empty store will do.
        create_database(DB_NAME, replace=True)
        devices, load = [], {"windows": 0}
    elif not reuse:
        create_database(DB_NAME, replace=True)
        load = asyncio.run(_load(store_url, quick))
        devices = load.pop("device_ids")
        load.pop("data_end")
        (results_dir / "bench_api_devices.json").write_text(json.dumps(devices))
    else:
        devices = json.loads((results_dir / "bench_api_devices.json").read_text())
        load = {"windows": None, "reused": True}
    broker = TansuBroker(port=free_port())
    broker.start()
    stubs = Stubs()
    stubs.start()
    prefix = f"bench{secrets.token_hex(3)}."
    proc, url = _start_api(stubs, store_url, broker.bootstrap, prefix)
    queries: dict[str, Any] = {}
    push: dict[str, Any] = {"latencies_ms": []}
    try:
        if "queries" in parts:
            queries = asyncio.run(
                _bench_queries(
                    url,
                    store_url,
                    stubs.token,
                    devices,
                    days=days,
                    iterations=50 if quick else 300,
                    server=psutil.Process(proc.pid),
                )
            )
        if "push" in parts:
            push = _bench_push(
                url,
                stubs.token,
                broker.bootstrap,
                prefix,
                clients=200 if quick else 1000,
                pushes=20 if quick else 50,
                procs=2 if quick else 4,
                server=psutil.Process(proc.pid),
            )
            push["server_side"] = _server_push_delay(url)
    finally:
        stop_process(proc)
        stubs.stop()
        broker.stop()
        if not keep:
            drop_database(DB_NAME)
    plot = _plot(results_dir, queries, push)
    push.pop("latencies_ms", None)
    load_avg = [round(x, 1) for x in os.getloadavg()]
    summary = [
        f"**Monitoring API** — {'quick' if quick else 'full'} run (machine load average at the "
        f"end {load_avg[0]} on {os.cpu_count()} CPUs; every figure is a shared-machine figure)",
    ]
    if queries:
        summary.append(
            f"- Store: {load.get('windows') or 'reused'} windows, 100 devices × 5 metrics "
            "(PostgreSQL backend)."
        )
        summary += _query_summary(queries)
    if push.get("n"):
        side = push.get("server_side", {})
        summary.append(
            f"- Push, Kafka → {push['clients']} Socket.IO clients in one device room "
            f"({push['pushes']} pushes, 5/s): p50 **{push.get('p50_ms')} ms**, p99 "
            f"**{push.get('p99_ms')} ms** (target p99 ≤ 250 ms); {push['deliveries_received']:,} "
            f"of {push['deliveries_expected']:,} deliveries arrived. Server side (Kafka "
            f"timestamp → queued to all clients): p50 ≤ {side.get('p50_le_ms')} ms, p99 ≤ "
            f"{side.get('p99_le_ms')} ms. API CPU: {push['server_cpu_us_per_delivery']} µs per "
            f"delivery (≈ {1e6 / max(push['server_cpu_us_per_delivery'], 1):,.0f} deliveries per "
            "core-second), a figure the machine's load does not distort."
        )
    return {
        "benchmark": "api",
        "quick": quick,
        "wall_s": round(time.perf_counter() - started, 1),
        "load_average_at_end": load_avg,
        "load": load,
        "queries": queries,
        "push": push,
        "plot": plot,
        "summary": summary,
    }


def _query_summary(queries: dict[str, Any]) -> list[str]:
    main = queries["http_24h_1m_all_metrics"]
    one = queries["http_24h_1m_one_metric_mean"]
    cols = queries["http_24h_1m_all_metrics_columns"]
    base = queries["store_24h_1m_all_metrics"]
    return [
        f"- `GET /monitoring/data/{{id}}?interval=1m`, 24 h, all 5 metrics × 7 aggregates "
        f"({main['points_returned']} points, {main['response_bytes'] / 1e3:.0f} kB): p50 "
        f"**{main['p50_ms']} ms**, p99 **{main['p99_ms']} ms** (target p99 ≤ 50 ms); the same "
        f"store query without HTTP: p50 {base['p50_ms']} ms, p99 {base['p99_ms']} ms "
        f"(API/store p50 = {main['p50_ms'] / base['p50_ms']:.2f}×). The API process's own CPU "
        f"per request: {main['api_cpu_ms_per_request']} ms (columns: "
        f"{cols['api_cpu_ms_per_request']} ms), PostgreSQL's not included.",
        f"- Same with `layout=columns` ({cols['response_bytes'] / 1e3:.0f} kB): p50 "
        f"**{cols['p50_ms']} ms**, p99 **{cols['p99_ms']} ms**.",
        f"- Same, one metric's mean ({one['points_returned']} points): p50 {one['p50_ms']} ms, "
        f"p99 {one['p99_ms']} ms.",
    ]


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    results = run(pathlib.Path("benchmarks/results"), quick=quick)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
