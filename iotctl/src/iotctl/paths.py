"""Where the stack runner finds the repository and keeps its run state (``.run/``)."""

from __future__ import annotations

import os
from pathlib import Path


def _is_workspace_root(path: Path) -> bool:
    pyproject = path / "pyproject.toml"
    if not pyproject.is_file():
        return False
    try:
        return "[tool.uv.workspace]" in pyproject.read_text(encoding="utf-8")
    except OSError:
        return False


def repo_root() -> Path:
    """The workspace root: ``IOTCTL_ROOT``, else the nearest parent of cwd or of this package."""
    given = os.environ.get("IOTCTL_ROOT")
    if given:
        return Path(given).resolve()
    for start in (Path.cwd(), Path(__file__).resolve()):
        for candidate in (start, *start.parents):
            if _is_workspace_root(candidate):
                return candidate
    return Path.cwd()


def run_dir() -> Path:
    """Pid file, logs and rendered configs of the local stack (git-ignored)."""
    given = os.environ.get("IOTCTL_RUN_DIR")
    path = Path(given) if given else repo_root() / ".run"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()
