"""``simulator`` command: run a fleet of virtual devices against the platform."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from iot_common.logging import setup_logging
from simulator.config import get_settings
from simulator.fleet import load_fleet
from simulator.ledger import read_ledger
from simulator.registry import (
    RegistrationError,
    default_devices_file,
    devices_exist,
    load_devices,
    local_devices,
    register_devices,
    save_devices,
)
from simulator.runner import RunOptions, run
from simulator.transports import TransportConfig

app = typer.Typer(help="Virtual devices for the IoT platform: load, demos, proofs of delivery.")
console = Console(stderr=True)
log = logging.getLogger("simulator")


class TransportKind(StrEnum):
    mqtt = "mqtt"
    amqp = "amqp"
    http = "http"
    null = "null"


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Fleet YAML file.")],
    rate: Annotated[float, typer.Option(help="Readings per second, whole fleet.")] = 100.0,
    duration: Annotated[
        float, typer.Option(min=0, help="Seconds to publish (0: until interrupted).")
    ] = 60.0,
    transport: Annotated[TransportKind, typer.Option(help="How to publish.")] = TransportKind.mqtt,
    batch: Annotated[int, typer.Option(min=1, help="Readings per message (gateway batching).")] = 1,
    seed: Annotated[int | None, typer.Option(help="Overrides the fleet's seed.")] = None,
    processes: Annotated[
        int | None, typer.Option(min=1, help="Publishing processes (default: what the rate needs).")
    ] = None,
    reuse_devices: Annotated[
        bool, typer.Option(help="Publish as the devices registered by an earlier run.")
    ] = False,
    register: Annotated[
        bool,
        typer.Option(
            help="Register devices through device-management (--no-register: local ids only)."
        ),
    ] = True,
    devices_file: Annotated[
        Path | None, typer.Option(help="Where registered devices and tokens are kept.")
    ] = None,
    ledger: Annotated[Path | None, typer.Option(help="Write a ledger directory here.")] = None,
    mqtt_topic_prefix: Annotated[str | None, typer.Option(help="Prefix of MQTT topics.")] = None,
    run_id: Annotated[str | None, typer.Option(help="Run id (default: random).")] = None,
    live: Annotated[bool, typer.Option(help="Live progress display.")] = True,
    give_up_after: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds an unconfirmed message is kept and re-sent (across reconnects) "
            "before it counts as failed.",
        ),
    ] = 60.0,
    summary_json: Annotated[
        Path | None, typer.Option(help="Also write the summary as JSON here.")
    ] = None,
) -> None:
    """Register (or reuse) the fleet's devices, then publish at RATE readings/s for DURATION s."""
    settings = get_settings()
    setup_logging("simulator", level=settings.log_level, json=settings.log_json)
    fleet = load_fleet(config)
    rid = run_id or secrets.token_hex(4)
    path = devices_file or default_devices_file(fleet)
    devices = None
    if not register:
        devices = local_devices(fleet, fleet.seed if seed is None else seed)
    elif reuse_devices:
        devices = load_devices(path, fleet)
        if devices is not None:
            try:
                known = asyncio.run(
                    devices_exist(
                        devices,
                        signing_url=settings.signing_url,
                        device_management_url=settings.device_management_url,
                        email=settings.admin_email,
                        password=settings.admin_password.get_secret_value(),
                    )
                )
            except RegistrationError as exc:
                console.print(f"[red]cannot check the saved devices:[/red] {exc}")
                raise typer.Exit(2) from exc
            if known:
                console.print(f"reusing {len(devices)} devices from {path}")
            else:
                console.print(f"device-management no longer knows the devices in {path}")
                devices = None
    if devices is None:
        console.print(f"registering {fleet.device_count} devices through device-management…")
        try:
            devices = asyncio.run(
                register_devices(
                    fleet,
                    signing_url=settings.signing_url,
                    device_management_url=settings.device_management_url,
                    email=settings.admin_email,
                    password=settings.admin_password.get_secret_value(),
                    tag=rid,
                )
            )
        except RegistrationError as exc:
            console.print(f"[red]registration failed:[/red] {exc}")
            raise typer.Exit(2) from exc
        save_devices(path, fleet, devices)
        console.print(f"registered {len(devices)} devices (saved to {path})")

    tcfg = TransportConfig(
        kind=transport.value,
        mqtt_host=settings.mqtt_host,
        mqtt_port=settings.mqtt_port,
        mqtt_topic_prefix=(
            settings.mqtt_topic_prefix if mqtt_topic_prefix is None else mqtt_topic_prefix
        ),
        rabbitmq_url=settings.rabbitmq_url.get_secret_value(),
        telemetry_exchange=settings.telemetry_exchange,
        ingest_url=settings.ingest_url,
        give_up_after=give_up_after,
        config_poll_interval=settings.config_poll_interval,
    )
    opts = RunOptions(
        fleet=fleet,
        rate=rate,
        duration=duration if duration > 0 else math.inf,
        transport=tcfg,
        batch=batch,
        seed=seed,
        processes=processes,
        devices=devices,
        ledger_dir=ledger,
        run_id=rid,
        live=live,
    )
    summary = run(opts, console=console)
    print_summary(summary)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=1))
    if summary["failed"] or summary["failed_processes"]:
        raise typer.Exit(1)


def print_summary(summary: dict[str, object]) -> None:
    table = Table(title="simulator summary", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in summary.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else str(value)
        table.add_row(key.replace("_", " "), shown)
    console.print(table)


@app.command("ledger")
def ledger_cmd(
    path: Annotated[Path, typer.Argument(help="A ledger directory written by `run --ledger`.")],
) -> None:
    """Summarise a ledger: readings, data points and injected faults."""
    led = read_ledger(path)
    recs = led.records
    out = {
        "run_id": led.manifest.get("run_id"),
        "records": len(recs),
        "data_points": int(recs["points"].sum()),
        "devices": len(led.devices),
        "faults": led.fault_counts(),
    }
    typer.echo(json.dumps(out, indent=1))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
