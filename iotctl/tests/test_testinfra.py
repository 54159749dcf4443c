"""iotctl.testinfra: the infrastructure helpers the tests and the benchmarks share."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import redis

from iotctl.testinfra import (
    PsqlError,
    RabbitAdmin,
    coverage_by_package,
    coverage_lines,
    create_database,
    database_url,
    drop_database,
    drop_redis_namespace,
    mongodb_server,
    percentiles,
    pg_admin_url,
    psql,
    stop_process,
)


def test_the_admin_url_comes_from_one_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IOT_TEST_PG_ADMIN", raising=False)
    monkeypatch.delenv("IOT_BENCH_PG_ADMIN", raising=False)
    assert pg_admin_url() == "postgresql://postgres@127.0.0.1:5432/postgres"
    monkeypatch.setenv("IOT_TEST_PG_ADMIN", "postgresql://admin@db.test:6543/template1")
    assert pg_admin_url() == "postgresql://admin@db.test:6543/template1"
    assert database_url("x") == "postgresql://admin@db.test:6543/x"


def test_the_retired_benchmark_variable_is_refused_not_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IOT_TEST_PG_ADMIN", raising=False)
    monkeypatch.setenv("IOT_BENCH_PG_ADMIN", "postgresql://admin@elsewhere/postgres")
    with pytest.raises(RuntimeError, match=r"IOT_BENCH_PG_ADMIN is no longer read.*TEST_PG"):
        pg_admin_url()


async def test_a_throw_away_database_is_created_replaced_and_dropped() -> None:
    name = f"iot_test_testinfra_{secrets.token_hex(4)}"
    url = create_database(name)
    try:
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE marker (x int)")
        await conn.close()
        assert create_database(name, replace=True) == url  # a fresh one: the table is gone
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT to_regclass('marker')") is None
        # Dropping closes the connections still open on it.
        drop_database(name)
        assert conn.is_closed() or not await _alive(conn)
    finally:
        drop_database(name)
    assert psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'").split()[-3] == "0"


async def _alive(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError):
        return False
    return True


def test_a_refused_statement_says_what_psql_said() -> None:
    name = f"iot_test_testinfra_{secrets.token_hex(4)}"
    create_database(name)
    try:
        with pytest.raises(PsqlError, match=f'database "{name}" already exists'):
            create_database(name)
    finally:
        drop_database(name)


def test_percentiles_are_numpys_linear_ones() -> None:
    values = [float(v) for v in np.random.default_rng(7).exponential(20.0, 1001)]
    got = percentiles(values, (50, 90, 99), unit="_ms", digits=4, mean=True)
    assert got["n"] == 1001
    for q in (50, 90, 99):
        assert got[f"p{q}_ms"] == round(float(np.percentile(values, q)), 4)
    assert got["mean_ms"] == round(float(np.mean(values)), 4)
    assert got["max_ms"] == round(max(values), 4)
    assert list(got) == ["n", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms"]
    assert percentiles([]) == {"n": 0}
    assert percentiles([3.0]) == {"n": 1, "p50": 3.0, "p90": 3.0, "p99": 3.0, "max": 3.0}


def test_dropping_a_redis_namespace_leaves_the_others(redis_url: str, run_id: str) -> None:
    client = redis.Redis.from_url(redis_url)
    mine, other = f"testinfra{run_id}a", f"testinfra{run_id}b"
    try:
        client.mset({f"{mine}:k{i}": i for i in range(1200)} | {f"{other}:keep": 1})
        assert drop_redis_namespace(redis_url, mine) == 1200
        assert not list(client.scan_iter(match=f"{mine}:*"))
        assert client.get(f"{other}:keep") == b"1"
    finally:
        client.delete(f"{other}:keep")
        client.close()


def test_the_rabbitmq_administrator_is_read_from_its_amqp_url_once() -> None:
    # An AMQP URL percent-encodes its credentials: the management API wants them decoded, a
    # URL into a vhost wants them quoted again (not twice).
    admin = RabbitAdmin.from_url("amqp://ad%40min:p%2Fss%3Aword@rabbit.test:5673/")
    assert (admin.host, admin.port, admin.username, admin.password) == (
        "rabbit.test",
        5673,
        "ad@min",
        "p/ss:word",
    )
    assert admin.url("iot/e2e") == "amqp://ad%40min:p%2Fss%3Aword@rabbit.test:5673/iot%2Fe2e"
    assert admin.url("v", "bridge-1", "s3cr@t") == "amqp://bridge-1:s3cr%40t@rabbit.test:5673/v"
    assert RabbitAdmin.from_url("amqp://") == RabbitAdmin("127.0.0.1", 5672, "guest", "guest")


async def test_the_rabbitmq_administrator_logs_in_to_the_management_api(
    rabbitmq_vhost: Any,
) -> None:
    async with rabbitmq_vhost.admin.management(rabbitmq_vhost.management_url) as api:
        assert rabbitmq_vhost.admin.username in await api.vhost_users(rabbitmq_vhost.name)


def test_a_given_mongodb_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGODB_URL", "mongodb://db.test:27018/")
    with mongodb_server() as url:
        assert url == "mongodb://db.test:27018/"


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert stop_process(polite, timeout=10) == -signal.SIGTERM
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    assert stop_process(stubborn, timeout=0.5) == -signal.SIGKILL
    stubborn.stdout.close()


def test_make_test_s_broker_runs_until_told_to_stop_and_takes_tansu_with_it() -> None:
    """``scripts/test.sh`` runs ``python -m iotctl.testinfra tansu PORT`` in the background."""
    import signal
    import subprocess
    import sys

    from iotctl.broker import free_port, port_open, speaks_kafka

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "iotctl.testinfra", "tansu", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"127.0.0.1:{port}"
        assert speaks_kafka("127.0.0.1", port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not port_open("127.0.0.1", port)
    finally:
        proc.kill()
        proc.wait()


_COBERTURA = """<?xml version="1.0" ?>
<coverage version="7.17.5" lines-valid="6" lines-covered="3" line-rate="0.5">
  <sources><source>alpha/src</source><source>beta-pkg/src</source></sources>
  <packages>
    <package name="alpha">
      <classes>
        <class name="a.py" filename="alpha/a.py">
          <lines><line number="1" hits="3"/><line number="2" hits="0"/></lines>
        </class>
        <class name="__init__.py" filename="alpha/__init__.py"><lines/></class>
      </classes>
    </package>
    <package name="beta">
      <classes>
        <class name="b.py" filename="beta/b.py">
          <lines>
            <line number="1" hits="1"/><line number="2" hits="1"/>
            <line number="3" hits="0"/><line number="4" hits="0"/>
          </lines>
        </class>
      </classes>
    </package>
  </packages>
</coverage>
"""


def test_coverage_totals_are_per_workspace_folder(tmp_path: Path) -> None:
    for folder, package, module in (("alpha", "alpha", "a.py"), ("beta-pkg", "beta", "b.py")):
        (tmp_path / folder / "src" / package).mkdir(parents=True)
        (tmp_path / folder / "src" / package / module).touch()
    (tmp_path / "alpha" / "src" / "alpha" / "__init__.py").touch()
    (tmp_path / "coverage.xml").write_text(_COBERTURA)
    totals = coverage_by_package(tmp_path / "coverage.xml")
    # Named by the folder (``beta-pkg``), not the import name (``beta``).
    assert totals == {"alpha": (1, 2), "beta-pkg": (2, 4)}
    assert coverage_lines(totals) == [
        "coverage alpha: 50.0 % (1 of 2 lines)",
        "coverage beta-pkg: 50.0 % (2 of 4 lines)",
        "coverage total: 50.0 % (3 of 6 lines)",
    ]
    assert coverage_lines({}) == []
