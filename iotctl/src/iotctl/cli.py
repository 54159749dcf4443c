"""The ``iotctl`` command line: ``up``, ``status``, ``down``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from iotctl import paths
from iotctl.broker import BrokerUnavailable
from iotctl.components import COMPONENTS, ORDER, landed
from iotctl.deps import MissingDependency
from iotctl.gateway import nginx_binary
from iotctl.procs import Proc, StackState, load_stacks, stacks_dir, stop_group
from iotctl.stack import (
    DEFAULT_HEALTH_TIMEOUT,
    StopSignals,
    component_up,
    mqtt_address,
    preflight,
    run_up,
)

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
        bool, typer.Option("--detach", "-d", help="Run in the background and return.")
    ] = False,
    health_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for each component's health endpoint.")
    ] = DEFAULT_HEALTH_TIMEOUT,
    rate: Annotated[float, typer.Option(help="Simulator readings per second, whole fleet.")] = 20.0,
    restart: Annotated[
        bool, typer.Option(help="Restart a component that dies (with back-off).")
    ] = True,
    store: Annotated[
        str,
        typer.Option(
            help="Monitoring store backend: postgres (the local database) or mongodb (a "
            "MongoDB-compatible emulator started with the stack, IOTCTL_MONGODB_PORT)."
        ),
    ] = "postgres",
) -> None:
    """Start components (and what they need), wait until healthy; Ctrl-C stops them."""
    names = list(components or [])
    if store not in ("postgres", "mongodb"):
        raise _fail(f"unknown store {store!r}; choose postgres or mongodb")
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise _fail(f"unknown component {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    root, run = paths.repo_root(), paths.run_dir()
    try:
        preflight(names, root)
        if detach:
            options = [f"--health-timeout={health_timeout}", f"--rate={rate}", f"--store={store}"]
            if not restart:
                options.append("--no-restart")
            code = _detach(names, options, run)
        else:
            code = run_up(
                names,
                root=root,
                run=run,
                console=console,
                health_timeout=health_timeout,
                simulator_rate=rate,
                restart=restart,
                detached=os.environ.get("IOTCTL_DETACHED") == "1",
                store=store,
            )
    except (MissingDependency, BrokerUnavailable) as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(code)


def _detach(names: list[str], options: list[str], run: Path) -> int:
    """Run the supervisor in the background; echo its output until the stack is up."""
    log_dir = run / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "iotctl.log"
    with open(log, "ab") as out:
        start = out.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "iotctl", "up", *names, *options],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "IOTCTL_DETACHED": "1", "COLUMNS": os.environ.get("COLUMNS", "100")},
            start_new_session=True,
        )
    state_file = stacks_dir(run) / f"{proc.pid}.json"
    offset = start
    # Ctrl-C here stops the background supervisor we just started; repeats must not cut that
    # stop short (see StopSignals).
    with StopSignals():
        try:
            while True:
                offset = _echo_from(log, offset)
                state = StackState.load(state_file)
                code = proc.poll()
                if code is not None:
                    _echo_from(log, offset)
                    return code
                if state is not None and state.ready:
                    # Let the supervisor print its summary before handing back the terminal.
                    time.sleep(0.3)
                    _echo_from(log, offset)
                    return 1 if state.failed else 0
                time.sleep(0.1)
        except KeyboardInterrupt:
            stop_group(Proc("iotctl", proc.pid, _ctime(proc.pid)), 30)
            return 130


def _ctime(pid: int) -> float:
    from iotctl.procs import create_time

    return create_time(pid)


def _echo_from(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    if data:
        sys.stdout.write(data.decode("utf-8", "replace"))
        sys.stdout.flush()
    return offset + len(data)


def _component_status(name: str, stacks: list[StackState]) -> dict[str, object]:
    comp = COMPONENTS[name]
    proc = next((s.procs[name] for s in stacks if name in s.procs and s.procs[name].alive()), None)
    pid = proc.pid if proc else None
    available = nginx_binary() is not None if comp.kind == "gateway" else landed(comp)
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
    elif comp.kind == "mqtt":
        host, port = mqtt_address()
        where = f"mqtt://{host}:{port}"
    elif comp.health_url:
        where = comp.health_url
    return {"component": name, "health": health, "pid": pid, "built": available, "where": where}


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print each component's health."""
    stacks = list(load_stacks(paths.run_dir()).values())
    rows = [_component_status(name, stacks) for name in ORDER]
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
    """Stop every stack `iotctl up` started (with --detach, or in another terminal)."""
    stacks = load_stacks(paths.run_dir())
    if not stacks:
        console.print("no stack is running (start one with `iotctl up`)")
        return
    for path, state in stacks.items():
        if state.supervisor_alive():
            console.print(f"stopping the stack of `iotctl up` (pid {state.supervisor_pid})")
            # The supervisor stops its components itself, in reverse start order.
            stop_group(state.supervisor, timeout * (len(state.procs) + 1))
        order = [n for n in ORDER if n in state.procs]
        order += [n for n in state.procs if n not in ORDER]
        for name in reversed(order):
            if stop_group(state.procs[name], timeout):
                console.print(f"{name}: stopped")
        path.unlink(missing_ok=True)
    console.print("stack stopped")


def main() -> None:
    app()
