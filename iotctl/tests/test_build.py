"""`iotctl up` builds the dashboard when missing or stale, with the script `make test` uses."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from iotctl.components import COMPONENTS
from iotctl.stack import build_assets

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = Path("monitoring-api/frontend")
OUT = Path("monitoring-api/src/monitoring_api/static/dashboard")
MONITORING = COMPONENTS["monitoring-api"]


def _copy_tree(tmp_path: Path) -> Path:
    """A repository root holding only the build script and the front end's sources.

    The installed ``node_modules`` is shared by a link (mtimes kept, so the copy's lock file is
    not newer than the install and nothing is reinstalled): the test builds, it does not
    download.
    """
    root = tmp_path / "repo"
    script = Path(MONITORING.build[0])
    (root / script).parent.mkdir(parents=True)
    shutil.copy2(ROOT / script, root / script)
    shutil.copytree(ROOT / FRONTEND, root / FRONTEND, ignore=shutil.ignore_patterns("node_modules"))
    (root / FRONTEND / "node_modules").symlink_to(ROOT / FRONTEND / "node_modules")
    return root


def test_missing_then_current_then_stale_dashboard(tmp_path: Path) -> None:
    # The checkout's own build first: it installs node_modules when a fresh clone lacks them.
    ok, line = build_assets(MONITORING, ROOT)
    assert ok, line
    assert line.startswith(("dashboard built in", "dashboard up to date in")), line

    root = _copy_tree(tmp_path)
    index = root / OUT / "index.html"
    assert not index.exists()

    ok, line = build_assets(MONITORING, root)
    assert ok, line
    assert line.startswith(f"dashboard built in {OUT}"), line
    html = index.read_text()
    assets = [p for p in (root / OUT / "assets").iterdir() if p.suffix == ".js"]
    assert assets and all(f"/dashboard/assets/{p.name}" in html for p in assets)

    ok, line = build_assets(MONITORING, root)
    assert ok, line
    assert line == f"dashboard up to date in {OUT}"

    # An edited source (newer than the build) is rebuilt. The build is aged rather than the
    # source moved into the future: a rebuild within the same second must still count.
    earlier = time.time() - 10
    os.utime(index, (earlier, earlier))
    source = next((root / FRONTEND / "src").iterdir())
    source.touch()
    ok, line = build_assets(MONITORING, root)
    assert ok, line
    assert line.startswith(f"dashboard built in {OUT}"), line
    assert index.stat().st_mtime > earlier + 5

    ok, line = build_assets(MONITORING, root)
    assert ok, line
    assert line == f"dashboard up to date in {OUT}"


def test_a_failed_build_is_one_line(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    page = '<script type="module" src="/src/nope.js"></script>'
    (root / FRONTEND / "index.html").write_text(page)
    ok, line = build_assets(MONITORING, root)
    assert not ok
    assert "\n" not in line
    assert line.startswith("dashboard build (npm run build) failed: "), line
    assert "Failed to resolve /src/nope.js" in line
