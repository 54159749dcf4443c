"""A stream-agents worker whose stop never finishes: one of its close steps waits forever.

Run as a script by test_shutdown_e2e: only the stop deadline can end it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stream_agents import __main__ as agents_main
from stream_agents.app import AgentsApp, create_app


def create_hanging_app(*args: Any, **kwargs: Any) -> AgentsApp:
    app = create_app(*args, **kwargs)

    async def wait_forever() -> None:
        await asyncio.Event().wait()

    app.closing.append(wait_forever)
    return app


if __name__ == "__main__":
    agents_main.create_app = create_hanging_app
    agents_main.main()
