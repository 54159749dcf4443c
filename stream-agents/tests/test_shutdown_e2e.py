"""A worker asked to stop (SIGTERM) exits, whatever state its broker is in and whatever part
of its stop still waits."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents_testkit import AgentEnv, Worker, create_topics

from iotctl.broker import TansuBroker, free_port
from stream_agents.__main__ import EXIT_STOP_DEADLINE

#: Far longer than a stop takes (about 2 s here); the old worker with its broker gone took
#: 62 s (mode's 60-s wait for the consumer thread), the hanging one never exits.
GENEROUS = 30.0


def _exit_code(w: Worker) -> int | None:
    w.proc.terminate()
    try:
        return w.proc.wait(GENEROUS)
    except subprocess.TimeoutExpired:
        return None


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    broker = TansuBroker(port=free_port(), log_path=tmp_path / "tansu.log")
    broker.start()
    yield broker
    broker.stop()


def test_sigterm_stops_a_worker_whose_broker_is_gone(
    agent_env_factory: Any, private_broker: TansuBroker
) -> None:
    # The deadline is far off: the stop itself must finish.
    ae: AgentEnv = agent_env_factory(
        IOT_KAFKA_BOOTSTRAP=private_broker.bootstrap, AGENTS_SHUTDOWN_TIMEOUT="600"
    )
    asyncio.run(create_topics(private_broker.bootstrap, ae.topics))
    w = ae.start_worker()
    ae.wait_ready(w)
    assert private_broker.proc is not None
    private_broker.proc.kill()  # the broker dies: every connection of the worker drops
    private_broker.proc.wait()
    assert _exit_code(w) == 0, f"the worker did not stop within {GENEROUS:g} s of SIGTERM"


def test_a_stop_that_never_finishes_ends_at_the_deadline(agent_env_factory: Any) -> None:
    ae: AgentEnv = agent_env_factory(AGENTS_SHUTDOWN_TIMEOUT="2")
    w = ae.start_worker(argv=(str(Path(__file__).with_name("hanging_worker.py")),))
    ae.wait_ready(w)
    assert _exit_code(w) == EXIT_STOP_DEADLINE, (
        f"the worker did not exit by its deadline within {GENEROUS:g} s of SIGTERM"
    )
    assert b"did not stop within 2 s" in Path(w.log.name).read_bytes()
