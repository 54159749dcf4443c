"""device-management benchmark: device reads and the ingest bridge's device lookup.

A real ``device-management`` process (uvicorn, one worker) runs against a fresh PostgreSQL
database and the local Redis; this process is the load generator, with 50 concurrent clients
(asyncio tasks; HTTP/1.1 keep-alive, one connection each). Four scenarios:

- ``GET /devices/{id}``, token cached: every client uses the same user token, so the service's
  verifier answers from its token cache; each request reads the device from PostgreSQL and its
  last-seen time from Redis (and refreshes the cache entry).
- ``GET /devices/{id}``, token uncached: every request carries a token the service has not
  seen, so each pays the full RS256 verification too.
- Bridge lookup, cached: what the ingest bridge does per reading when the device is in the
  cache: one ``HGETALL`` of the device's cache hash.
- Bridge lookup, uncached: the cache is emptied before each pass over the devices, so every
  lookup is ``HGETALL`` (miss) then ``GET /internal/devices/{id}`` (PostgreSQL, refills the cache).

Reported per scenario: requests/s (completed lookups over wall time) and p50/p99 latency,
and the cached/uncached ratios. Run: ``uv run python -m benchmarks.bench_devices``
(``--quick`` for a short run). The machine's load (other processes) shows in the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import numpy as np
import psutil
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from redis.asyncio import Redis

from iot_common import redis_keys
from iotctl.testinfra import (
    create_database,
    database_url,
    drop_database,
    drop_redis_namespace,
    free_port,
    percentiles,
    stop_process,
)

REDIS_URL = os.environ.get("IOT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CONCURRENCY = 50
KID = "bench-key"
INTERNAL_TOKEN = "bench-internal-" + secrets.token_hex(8)


def _cli() -> str:
    return str(pathlib.Path(sys.executable).with_name("device-management"))


@contextlib.contextmanager
def _jwks_server(key: rsa.RSAPrivateKey) -> Iterator[str]:
    """Serve the public key as signing's JWKS endpoint would."""
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


def _token(key: rsa.RSAPrivateKey, user_id: str, role: str = "operator") -> str:
    now = int(time.time())
    claims = {
        "sub": user_id,
        "email": "bench@example.com",
        "role": role,
        "iat": now,
        "exp": now + 3600,
        "jti": secrets.token_hex(16),
        "iss": "iot-signing",
        "aud": "iot-platform",
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stats(latencies: list[float], wall: float) -> dict[str, float]:
    pcts = percentiles([v * 1000 for v in latencies], (50, 99), unit="_ms")
    return {
        "requests": len(latencies),
        "req_per_s": round(len(latencies) / wall, 1),
        **{k: v for k, v in pcts.items() if k != "n"},  # p50_ms, p99_ms, max_ms
    }


_server: psutil.Process | None = None


def _server_cpu() -> float:
    if _server is None:
        return 0.0
    t = _server.cpu_times()
    return float(t.user + t.system)


class _HttpError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _Http:
    """A minimal HTTP/1.1 keep-alive client: a pool of 50 raw connections.

    httpx spends ~3 ms of CPU per request, more than the service does; on a 2-core machine
    the load generator would then measure itself. This spends a few tens of microseconds.
    """

    def __init__(self, host: str, port: int, size: int) -> None:
        self._host, self._port = host, port
        self._pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = (
            asyncio.Queue()
        )
        for _ in range(size):
            self._pool.put_nowait(None)

    async def close(self) -> None:
        while not self._pool.empty():
            conn = self._pool.get_nowait()
            if conn is not None:
                conn[1].close()

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: Any = None
    ) -> Any:
        payload = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self._host}:{self._port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        conn = await self._pool.get()
        try:
            for _attempt in range(2):
                if conn is None:
                    conn = await asyncio.open_connection(self._host, self._port)
                reader, writer = conn
                writer.write(raw)
                status_line = await reader.readline()
                if status_line:
                    break
                # The server closed an idle keep-alive connection: reconnect once.
                writer.close()
                conn = None
            status = int(status_line.split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            data = await reader.readexactly(length) if length else b""
        except BaseException:
            if conn is not None:
                conn[1].close()
            self._pool.put_nowait(None)
            raise
        self._pool.put_nowait(conn)
        if status >= 400:
            raise _HttpError(status)
        return json.loads(data) if data else None


async def _load(
    op: Callable[[int], Awaitable[None]], *, total: int | None = None, seconds: float = 10.0
) -> dict[str, Any]:
    """Run ``op(i)`` from 50 concurrent clients, for ``total`` calls or for ``seconds``.

    Besides throughput and latency, records the service process's CPU time per request: on a
    shared machine that figure is steadier than req/s (1000 / it ≈ req/s per free core).
    """
    latencies: list[float] = []
    counter = iter(range(total if total is not None else 1 << 62))
    stop_at = time.perf_counter() + seconds
    errors: dict[str, int] = {}

    async def client() -> None:
        for i in counter:
            if total is None and time.perf_counter() >= stop_at:
                return
            t0 = time.perf_counter()
            try:
                await op(i)
            except Exception as exc:
                kind = str(exc) if isinstance(exc, _HttpError) else type(exc).__name__
                errors[kind] = errors.get(kind, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)

    cpu0 = _server_cpu()
    me = psutil.Process()
    own0 = sum(me.cpu_times()[:2])
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    wall = time.perf_counter() - start
    out: dict[str, Any] = dict(_stats(latencies, wall))
    out["server_cpu_ms_per_req"] = round((_server_cpu() - cpu0) * 1000 / max(1, len(latencies)), 3)
    out["client_cpu_ms_per_req"] = round(
        (sum(me.cpu_times()[:2]) - own0) * 1000 / max(1, len(latencies)), 3
    )
    out["errors"] = errors
    return out


async def _scenarios(
    port: int, key: rsa.RSAPrivateKey, namespace: str, *, quick: bool
) -> dict[str, Any]:
    n_devices = 300 if quick else 2000
    seconds = 4.0 if quick else 15.0
    n_fresh_tokens = 1000 if quick else 3000
    uncached_passes = 2 if quick else 4
    owner = str(uuid.uuid4())
    token = _token(key, owner)
    headers = {"Authorization": f"Bearer {token}"}
    results: dict[str, Any] = {"devices": n_devices, "concurrency": CONCURRENCY}
    http = _Http("127.0.0.1", port, CONCURRENCY)
    async with Redis.from_url(REDIS_URL, max_connections=CONCURRENCY + 10) as redis:
        # Fleet of devices, created through the API.
        ids: list[str] = []

        async def create(i: int) -> None:
            created = await http.request(
                "POST",
                "/devices/",
                headers,
                {
                    "name": f"bench-{i}",
                    "type": "thermometer",
                    "config": {"metrics": [{"name": "temperature", "unit": "C"}]},
                },
            )
            ids.append(created["id"])

        results["create"] = await _load(create, total=n_devices)
        rng = np.random.default_rng(7)
        picks = [ids[j] for j in rng.integers(0, len(ids), size=1 << 16)]

        # Warm-up (connections, PostgreSQL plans, the verifier's cache).
        async def get_cached(i: int) -> None:
            await http.request("GET", f"/devices/{picks[i & 0xFFFF]}", headers)

        await _load(get_cached, seconds=1.0)
        results["get_device_token_cached"] = await _load(get_cached, seconds=seconds)

        fresh = [{"Authorization": f"Bearer {_token(key, owner)}"} for _ in range(n_fresh_tokens)]

        async def get_fresh_token(i: int) -> None:
            await http.request("GET", f"/devices/{picks[i & 0xFFFF]}", fresh[i])

        results["get_device_token_uncached"] = await _load(get_fresh_token, total=n_fresh_tokens)

        # The bridge's lookup: cache hash first, the internal endpoint on a miss.
        internal = {"X-Internal-Token": INTERNAL_TOKEN}
        misses = 0

        async def lookup(device_id: str) -> dict[str, Any]:
            nonlocal misses
            raw = await redis.hgetall(redis_keys.device_cache(namespace, device_id))
            if raw:
                return {_s(k): _s(v) for k, v in raw.items()}
            misses += 1
            return dict(await http.request("GET", f"/internal/devices/{device_id}", internal))

        async def lookup_pick(i: int) -> None:
            await lookup(picks[i & 0xFFFF])

        for device_id in ids:  # make sure every device is cached
            await lookup(device_id)
        misses = 0
        await _load(lookup_pick, seconds=1.0)
        results["bridge_lookup_cached"] = await _load(lookup_pick, seconds=seconds)
        results["bridge_lookup_cached"]["misses"] = misses

        misses = 0
        passes = []
        for _ in range(uncached_passes):
            keys = [redis_keys.device_cache(namespace, d) for d in ids]
            for k in range(0, len(keys), 500):
                await redis.delete(*keys[k : k + 500])

            async def lookup_uncached(i: int) -> None:
                await lookup(ids[i])

            passes.append(await _load(lookup_uncached, total=len(ids)))
        lat_weighted = {
            "requests": sum(p["requests"] for p in passes),
            "req_per_s": round(float(np.mean([p["req_per_s"] for p in passes])), 1),
            "p50_ms": round(float(np.median([p["p50_ms"] for p in passes])), 2),
            "p99_ms": round(float(np.max([p["p99_ms"] for p in passes])), 2),
            "server_cpu_ms_per_req": round(
                float(np.mean([p["server_cpu_ms_per_req"] for p in passes])), 3
            ),
            "errors": {k: v for p in passes for k, v in p["errors"].items()},
            "misses": misses,
            "passes": passes,
        }
        results["bridge_lookup_uncached"] = lat_weighted
    await http.close()
    return results


def _plot(results: dict[str, Any], results_dir: pathlib.Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [
        ("get_device_token_cached", "GET /devices/{id}\ntoken cached"),
        ("get_device_token_uncached", "GET /devices/{id}\nfresh token"),
        ("bridge_lookup_cached", "bridge lookup\ncache hit"),
        ("bridge_lookup_uncached", "bridge lookup\nmiss → internal API"),
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [label for _, label in names]
    ax1.bar(labels, [results[k]["req_per_s"] for k, _ in names], color="#4878a8")
    ax1.set_ylabel("requests / s")
    ax1.set_yscale("log")
    ax1.set_title(f"Throughput, {CONCURRENCY} concurrent clients")
    ax2.bar(labels, [results[k]["p99_ms"] for k, _ in names], color="#c8643c")
    ax2.set_ylabel("p99 latency (ms)")
    ax2.set_yscale("log")
    ax2.set_title("p99 latency")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path = results_dir / "devices_lookup.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def run(results_dir: pathlib.Path, *, quick: bool = False) -> dict[str, Any]:
    results_dir.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(4)
    db = f"iot_bench_devices_{run_id}"
    db_url = database_url(db)
    namespace = f"benchdm{run_id}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    port = free_port()
    create_database(db)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with _jwks_server(key) as jwks_url:
            env = {
                **os.environ,
                "DEVICE_MANAGEMENT_DATABASE_URL": db_url,
                "DEVICE_MANAGEMENT_REDIS_URL": REDIS_URL,
                "DEVICE_MANAGEMENT_REDIS_NAMESPACE": namespace,
                "DEVICE_MANAGEMENT_JWKS_URL": jwks_url,
                "DEVICE_MANAGEMENT_INTERNAL_TOKEN": INTERNAL_TOKEN,
                # Events stay in the outbox (dropped with the database): no broker traffic.
                "DEVICE_MANAGEMENT_RELAY_ENABLED": "false",
                "DEVICE_MANAGEMENT_ACCESS_LOG": "false",
                "DEVICE_MANAGEMENT_LOG_LEVEL": "WARNING",
                "DEVICE_MANAGEMENT_DB_POOL_SIZE": "20",
            }
            subprocess.run([_cli(), "migrate"], env=env, check=True, timeout=120)
            proc = subprocess.Popen([_cli(), "serve", "--port", str(port)], env=env)
            global _server
            _server = psutil.Process(proc.pid)
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("device-management did not become healthy")
                time.sleep(0.2)
            results = asyncio.run(_scenarios(port, key, namespace, quick=quick))
    finally:
        if proc is not None:
            stop_process(proc)
        with contextlib.suppress(subprocess.CalledProcessError):
            drop_database(db)
        drop_redis_namespace(REDIS_URL, namespace)

    plot = _plot(results, results_dir)
    g_c, g_u = results["get_device_token_cached"], results["get_device_token_uncached"]
    b_c, b_u = results["bridge_lookup_cached"], results["bridge_lookup_uncached"]
    summary = [
        f"### device-management ({CONCURRENCY} concurrent clients, {results['devices']} devices, "
        "one uvicorn worker, load generator on the same machine)",
        "",
        "| scenario | req/s | p50 ms | p99 ms | service CPU ms/req |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in [
        ("`GET /devices/{id}`, token cached", g_c),
        ("`GET /devices/{id}`, fresh token (full RS256 verify)", g_u),
        ("bridge lookup, cache hit (Redis `HGETALL`)", b_c),
        ("bridge lookup, miss → `GET /internal/devices/{id}`", b_u),
    ]:
        summary.append(
            f"| {name} | {r['req_per_s']:,.0f} | {r['p50_ms']} | {r['p99_ms']} "
            f"| {r['server_cpu_ms_per_req']} |"
        )
    load = os.getloadavg()[0]
    summary += [
        "",
        f"- Machine load average at the end: {load:.1f} on {os.cpu_count()} cores, shared with "
        "other work: req/s and latency depend on it; the service's CPU time per request does "
        "not (1000 / it ≈ req/s one free core could serve).",
        f"- Bridge lookup: a cache hit served {b_c['req_per_s'] / b_u['req_per_s']:.1f}× the "
        f"lookups/s of a miss (baseline), with {b_u['p99_ms'] / b_c['p99_ms']:.1f}× lower p99; "
        "a hit costs the service nothing.",
        f"- `GET /devices/{{id}}` with a fresh token: "
        f"{g_u['server_cpu_ms_per_req'] / g_c['server_cpu_ms_per_req']:.2f}× the service CPU "
        "per request of a cached token (baseline).",
    ]
    out: dict[str, Any] = {"benchmark": "devices", "quick": quick, **results, "summary": summary}
    if plot:
        out["plot"] = plot
    (results_dir / "devices.json").write_text(json.dumps(out, indent=2))
    return out


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    print(json.dumps(run(pathlib.Path("benchmarks/results"), quick=quick), indent=2))


if __name__ == "__main__":
    main()
