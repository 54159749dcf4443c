"""``benchmarks`` command: run the platform's benchmarks and write JSON results plus a report.

``benchmarks all`` runs every ``bench_*.py`` module of this package; ``benchmarks e2e ingest``
runs the named ones. Each runs in a fresh Python process (one benchmark's threads, caches or a
crash cannot skew or stop the next), calls ``run(results_dir, quick=...)`` and hands its JSON
back; the parent writes ``<name>.json``, ``results.json`` and ``REPORT.md`` (each benchmark's
summary, its plots and the machine it ran on) into the results directory. A benchmark whose runs
differ by more than ``--quick`` (``E2E_STORE=mongodb benchmarks e2e``) names its result itself
(``result_name``: ``e2e_mongodb``), so that each variant keeps its own ``<result_name>.json``.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any

import psutil
import typer

import benchmarks

DEFAULT_RESULTS = Path("benchmarks/results")

app = typer.Typer(
    help="Run benchmarks (`all` or names such as `e2e`, `ingest`) and write results + a report.",
    add_completion=False,
)


def available() -> list[str]:
    """Names of the benchmark modules in this package (``bench_<name>.py``)."""
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(benchmarks.__path__)
        if m.name.startswith("bench_")
    )


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def _run_child(name: str, results_dir: Path, quick: bool, out: Path) -> int:
    """Run one benchmark in this process and write its result (or its error) to ``out``."""
    started = time.time()
    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        result: dict[str, Any] = module.run(results_dir, quick=quick)
        status = 0
    except BaseException as exc:  # report any failure, including KeyboardInterrupt/SystemExit
        result = {
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "summary": [f"**failed**: `{type(exc).__name__}: {exc}`"],
        }
        status = 1
    result.setdefault("summary", [])
    result["_meta"] = {"seconds": round(time.time() - started, 1)}
    out.write_text(json.dumps(result, indent=1, default=str))
    return status


def result_name(name: str, result: dict[str, Any]) -> str:
    """The name benchmark ``name``'s result is kept under: the ``result_name`` it gave (one
    variant of it, e.g. ``e2e_mongodb``), else its own name."""
    given = result.get("result_name")
    if isinstance(given, str) and given and Path(given).name == given:
        return given
    return name


def _run_one(name: str, results_dir: Path, quick: bool) -> dict[str, Any]:
    """Run benchmark ``name`` in a child process; write and return its result."""
    # The child hands its result over in a file of its own: writing it straight to
    # ``<name>.json`` would replace another variant's result (e2e on the other store).
    handoff = results_dir / f".{name}.child.json"
    handoff.unlink(missing_ok=True)
    before = {p: p.stat().st_mtime for p in results_dir.glob("*.png")}
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "benchmarks", "_child", name, "--results-dir", str(results_dir)]
    cmd += ["--out", str(handoff)]
    if quick:
        cmd.append("--quick")
    typer.echo(f"==> benchmark {name}{' (quick)' if quick else ''}", err=True)
    proc = subprocess.run(cmd, check=False)
    try:
        result: dict[str, Any] = json.loads(handoff.read_text())
    except (OSError, json.JSONDecodeError):
        result = {"error": f"exited with code {proc.returncode} without a result", "summary": []}
        result["summary"] = [f"**failed**: {result['error']}"]
    handoff.unlink(missing_ok=True)
    kept_as = result_name(name, result)
    # The benchmark's plots: those it names, else new or rewritten PNGs named after it
    # (other runs may write into the same directory meanwhile).
    named = result.get("plots")
    if isinstance(named, list) and named:
        plots = sorted(str(p) for p in named)
    else:
        plots = sorted(
            p.name
            for p in results_dir.glob("*.png")
            if before.get(p) != p.stat().st_mtime and p.name.startswith((name, f"bench_{name}"))
        )
    result["_meta"] = {
        **result.get("_meta", {}),
        "name": name,
        "result_name": kept_as,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 1),
        "quick": quick,
        "exit_code": proc.returncode,
        "plots": plots,
        "command": f"benchmarks {name}{' --quick' if quick else ''}",
    }
    (results_dir / f"{kept_as}.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def write_report(results_dir: Path, results: dict[str, dict[str, Any]], command: str) -> Path:
    info = machine()
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    lines = [
        "# Benchmark report",
        "",
        f"- command: `{command}`",
        f"- date: {now}",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
        f"{info['os']}, Python {info['python']}",
        "",
    ]
    for name, result in results.items():
        meta = result.get("_meta", {})
        lines += [f"## {name}", ""]
        lines.append(
            f"`{meta.get('command', name)}` · started {meta.get('started', '?')} · "
            f"{meta.get('seconds', '?')} s"
        )
        lines.append("")
        lines += [str(line) for line in result.get("summary", [])]
        lines.append("")
        for plot in meta.get("plots", []):
            lines += [f"![{plot}]({plot})", ""]
    report = results_dir / "REPORT.md"
    report.write_text("\n".join(lines) + "\n")
    (results_dir / "results.json").write_text(
        json.dumps({"machine": info, "date": now, "command": command, "results": results}, indent=1)
    )
    return report


@app.command("list")
def list_cmd() -> None:
    """List the benchmarks."""
    for name in available():
        typer.echo(name)


@app.command("_child", hidden=True)
def child_cmd(
    name: str,
    results_dir: Annotated[Path, typer.Option()] = DEFAULT_RESULTS,
    quick: bool = False,
    out: Annotated[Path | None, typer.Option()] = None,
) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    raise typer.Exit(_run_child(name, results_dir, quick, out or results_dir / f"{name}.json"))


@app.command("run")
def run_cmd(
    names: Annotated[list[str], typer.Argument(help="`all` or benchmark names.")],
    quick: Annotated[bool, typer.Option(help="Short runs (smoke test of the benchmarks).")] = False,
    results_dir: Annotated[Path, typer.Option(help="Where results go.")] = DEFAULT_RESULTS,
) -> None:
    """Run benchmarks and write the report."""
    known = available()
    chosen = known if names == ["all"] else names
    unknown = [n for n in chosen if n not in known]
    if unknown:
        typer.echo(f"unknown benchmark(s) {unknown}; available: {', '.join(known)}", err=True)
        raise typer.Exit(2)
    results_dir.mkdir(parents=True, exist_ok=True)
    # Keyed by the name each result is kept under (e2e on MongoDB: ``e2e_mongodb``).
    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        result = _run_one(name, results_dir, quick)
        results[result["_meta"]["result_name"]] = result
    command = "benchmarks " + " ".join(names) + (" --quick" if quick else "")
    report = write_report(results_dir, results, command)
    failed = [n for n, r in results.items() if r.get("error")]
    typer.echo(f"report: {report}", err=True)
    if failed:
        typer.echo(f"failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


def main() -> None:
    # The benchmarks run the services on this machine with the repository's development
    # secrets (as `iotctl up` does); the services refuse those without this flag.
    os.environ.setdefault("IOT_ALLOW_DEV_DEFAULTS", "true")
    # `benchmarks all`, `benchmarks e2e --quick`: names without the `run` subcommand.
    args = sys.argv[1:]
    if args and args[0] not in {"run", "list", "_child", "--help", "-h"}:
        args = ["run", *args]
    app(args=args)


if __name__ == "__main__":
    main()
