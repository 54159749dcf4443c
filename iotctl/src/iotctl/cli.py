"""The ``iotctl`` command line: ``up``, ``status``, ``down``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from iotctl import paths
from iotctl.broker import BrokerUnavailable
from iotctl.components import COMPONENTS, ORDER, landed
from iotctl.deps import MissingDependency
from iotctl.gateway import nginx_binary
from iotctl.procs import Proc, StackState, stop_group
from iotctl.stack import DEFAULT_HEALTH_TIMEOUT, STATE_FILE, component_up, run_up

app = typer.Typer(
    help="Run the IoT platform locally: broker, services, gateway and simulator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]iotctl:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(1)


@app.command()
def up(
    components: Annotated[
        list[str] | None,
        typer.Argument(help=f"Components to start (default: all): {', '.join(ORDER)}"),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Start in the background and return.")
    ] = False,
    health_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for each component's health endpoint.")
    ] = DEFAULT_HEALTH_TIMEOUT,
    rate: Annotated[float, typer.Option(help="Simulator readings per second, whole fleet.")] = 20.0,
) -> None:
    """Start components (and what they need), wait until healthy; Ctrl-C stops them."""
    names = list(components or [])
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise _fail(f"unknown component {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    try:
        code = run_up(
            names,
            root=paths.repo_root(),
            run=paths.run_dir(),
            console=console,
            detach=detach,
            health_timeout=health_timeout,
            simulator_rate=rate,
        )
    except (MissingDependency, BrokerUnavailable) as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(code)


def _component_status(name: str, state: StackState | None) -> dict[str, object]:
    comp = COMPONENTS[name]
    proc: Proc | None = state.procs.get(name) if state else None
    pid = proc.pid if proc and proc.alive() else None
    available = False if comp.kind == "gateway" and nginx_binary() is None else landed(comp)
    if comp.kind == "simulator":
        health = "running" if pid else "stopped"
    elif component_up(comp):
        health = "healthy"
    elif pid:
        health = "unhealthy"
    else:
        health = "stopped"
    where = None
    if comp.kind == "broker":
        where = f"127.0.0.1:{comp.port}"
    elif comp.health_url:
        where = comp.health_url
    return {
        "component": name,
        "health": health,
        "pid": pid,
        "built": available,
        "where": where,
    }


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print each component's health."""
    state = StackState.load(paths.run_dir() / STATE_FILE)
    rows = [_component_status(name, state) for name in ORDER]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    styles = {"healthy": "green", "running": "green", "unhealthy": "red", "stopped": "dim"}
    table = Table(title="iotctl status")
    for col in ("component", "health", "pid", "where"):
        table.add_column(col)
    for row in rows:
        health = str(row["health"])
        if not row["built"] and health == "stopped":
            health_cell = "[dim]not built[/]"
        else:
            health_cell = f"[{styles.get(health, 'white')}]{health}[/]"
        table.add_row(
            str(row["component"]), health_cell, str(row["pid"] or ""), str(row["where"] or "")
        )
    console.print(table)


@app.command()
def down(
    timeout: Annotated[float, typer.Option(help="Seconds before SIGKILL.")] = 10.0,
) -> None:
    """Stop the stack that `iotctl up` started (with --detach, or in another terminal)."""
    path = paths.run_dir() / STATE_FILE
    state = StackState.load(path)
    if state is None:
        console.print("no stack is running (nothing was started with `iotctl up --detach`)")
        return
    if state.mode == "foreground" and state.supervisor_alive():
        supervisor = Proc("iotctl", state.supervisor_pid, state.supervisor_create_time)
        console.print(f"asking the foreground `iotctl up` (pid {supervisor.pid}) to stop")
        stop_group(supervisor, timeout + 15)
    order = [n for n in ORDER if n in state.procs] + [n for n in state.procs if n not in ORDER]
    for name in reversed(order):
        proc = state.procs[name]
        if stop_group(proc, timeout):
            console.print(f"{name}: stopped")
    path.unlink(missing_ok=True)
    console.print("stack stopped")


def main() -> None:
    app()
