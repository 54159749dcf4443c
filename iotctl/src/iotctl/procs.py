"""Child processes of the stack: start in their own process group, prefix logs, stop cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
from rich.console import Console
from rich.text import Text

COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "white")


@dataclass
class Proc:
    """A process the stack runner started (or, with ``external``, found already running)."""

    name: str
    pid: int
    create_time: float
    port: int | None = None
    log: str | None = None
    external: bool = False

    def alive(self) -> bool:
        if self.external or self.pid <= 0:
            return False
        try:
            p = psutil.Process(self.pid)
            return abs(p.create_time() - self.create_time) < 1.0 and p.status() != "zombie"
        except psutil.Error:
            return False


def stop_group(proc: Proc, timeout: float = 10.0) -> bool:
    """SIGTERM the process group of ``proc``, SIGKILL what is left after ``timeout``.

    Returns False when the process was already gone (or is not ours to stop).
    """
    if not proc.alive():
        return False
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return False
    # Only ever signal a group the child leads (it was started in its own session).
    target_group = pgid == proc.pid
    try:
        if target_group:
            os.killpg(pgid, signal.SIGTERM)
        else:
            os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive() and not (target_group and _group_alive(pgid)):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        if target_group:
            os.killpg(pgid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and proc.alive():
        time.sleep(0.05)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies of the group (our own children not yet reaped) do not count.
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


@dataclass
class StackState:
    """What one ``iotctl up`` supervisor records in ``.run/stacks/<pid>.json``."""

    supervisor_pid: int
    supervisor_create_time: float
    procs: dict[str, Proc] = field(default_factory=dict)
    #: True once every component was started (or failed, or skipped).
    ready: bool = False
    failed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            procs = {name: Proc(**p) for name, p in raw.get("procs", {}).items()}
            return cls(
                supervisor_pid=int(raw["supervisor_pid"]),
                supervisor_create_time=float(raw["supervisor_create_time"]),
                procs=procs,
                ready=bool(raw.get("ready", False)),
                failed=dict(raw.get("failed", {})),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        data: dict[str, Any] = {
            "supervisor_pid": self.supervisor_pid,
            "supervisor_create_time": self.supervisor_create_time,
            "ready": self.ready,
            "failed": self.failed,
            "procs": {name: asdict(p) for name, p in self.procs.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(path)

    @property
    def supervisor(self) -> Proc:
        return Proc("iotctl", self.supervisor_pid, self.supervisor_create_time)

    def supervisor_alive(self) -> bool:
        return self.supervisor.alive()


def stacks_dir(run: Path) -> Path:
    return run / "stacks"


def load_stacks(run: Path) -> dict[Path, StackState]:
    """Every recorded stack; files of supervisors that died with nothing left are removed."""
    found: dict[Path, StackState] = {}
    for path in sorted(stacks_dir(run).glob("*.json")):
        state = StackState.load(path)
        if state is None:
            continue
        if not state.supervisor_alive() and not any(p.alive() for p in state.procs.values()):
            path.unlink(missing_ok=True)
            continue
        found[path] = state
    return found


def create_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


class Supervisor:
    """Starts children in their own sessions; echoes their output with a coloured prefix
    and appends it to ``<log_dir>/<name>.log``."""

    def __init__(self, console: Console, *, log_dir: Path) -> None:
        self.console = console
        self.log_dir = log_dir
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.procs: dict[str, Proc] = {}
        self.tails: dict[str, deque[str]] = {}
        self.specs: dict[str, tuple[list[str], dict[str, str], Path, int | None]] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._width = 18

    def prefix(self, name: str) -> Text:
        colour = COLOURS[sum(name.encode()) % len(COLOURS)]
        return Text(f"{name:<{self._width}}| ", style=colour)

    def echo(self, name: str, line: str) -> None:
        with self._lock:
            text = self.prefix(name)
            text.append(line)
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def log_path(self, name: str) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{name}.log"

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        port: int | None = None,
    ) -> Proc:
        self.specs[name] = (list(cmd), dict(env), cwd, port)
        log = self.log_path(name)
        tail: deque[str] = self.tails.get(name) or deque(maxlen=40)
        self.tails[name] = tail
        with open(log, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        child = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        assert child.stdout is not None
        thread = threading.Thread(
            target=self._pump, args=(name, child.stdout, log, tail), daemon=True
        )
        thread.start()
        self._threads.append(thread)
        self.children[name] = child
        proc = Proc(name, child.pid, create_time(child.pid), port=port, log=str(log))
        self.procs[name] = proc
        return proc

    def adopt(self, proc: Proc, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.procs[proc.name] = proc
        if popen is not None:
            self.children[proc.name] = popen

    def restart(self, name: str) -> Proc:
        cmd, env, cwd, port = self.specs[name]
        return self.start(name, cmd, env=env, cwd=cwd, port=port)

    def _pump(self, name: str, stream: IO[bytes], log: Path, tail: deque[str]) -> None:
        with open(log, "ab", buffering=0) as out:
            for raw in iter(stream.readline, b""):
                out.write(raw)
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                self.echo(name, line)
        stream.close()

    def last_lines(self, name: str, n: int = 15) -> list[str]:
        tail = self.tails.get(name)
        if tail:
            return list(tail)[-n:]
        path = self.log_dir / f"{name}.log"
        try:
            return path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:]
        except OSError:
            return []

    def exited(self) -> dict[str, int]:
        """Children that have exited since they were started, with their exit codes."""
        return {
            name: code
            for name, child in self.children.items()
            if (code := child.poll()) is not None
        }

    def stop_all(self, timeout: float = 10.0) -> list[str]:
        stopped = []
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.external:
                continue
            if stop_group(proc, timeout):
                stopped.append(name)
            child = self.children.get(name)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(2)
        for thread in self._threads:
            thread.join(2)
        return stopped
