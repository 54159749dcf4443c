"""The private MongoDB-compatible server of tests, benchmarks and the reliability suite."""

from __future__ import annotations

import os
import signal
import time

import pymongo

from iotctl.sandbox import PrivateMongoDB


def test_stop_is_bounded_when_the_server_does_not_answer_and_keeps_what_was_acknowledged() -> None:
    """A restart of the emulator must not hang a test: its own SIGTERM shutdown is unbounded
    (it waits for running requests, its TTL sweeper and a final checkpoint; seen taking over
    20 s), and the old stop waited 20 s before killing it. Journaled writes survive the kill."""
    server = PrivateMongoDB(cache_size="64M", stop_grace=2.0)
    server.start()
    try:
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            server.url, journal=True, directConnection=True
        )
        client.iot_stop.docs.insert_many([{"i": i} for i in range(500)])
        client.close()
        assert server.proc is not None
        os.killpg(server.proc.pid, signal.SIGSTOP)  # a server too busy to answer
        t = time.monotonic()
        server.stop()
        took = time.monotonic() - t
        assert took < 12, f"stop took {took:.1f} s"
        server.start()
        client = pymongo.MongoClient(server.url, directConnection=True)
        try:
            assert client.iot_stop.docs.count_documents({}) == 500
        finally:
            client.close()
    finally:
        server.cleanup()
    assert server.proc is None
    assert not server.directory.exists()
