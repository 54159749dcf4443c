"""sonar-project.properties and `make test`'s coverage measure every workspace package."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _properties() -> dict[str, str]:
    """The file as SonarScanner reads it (Java properties: ``\\`` continues a line)."""
    text = (ROOT / "sonar-project.properties").read_text().replace("\\\n", "")
    pairs = (
        line.split("=", 1)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def test_sonar_reads_every_packages_src_and_tests_and_the_coverage_report() -> None:
    members = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"][
        "members"
    ]
    props = _properties()
    sources = [s.strip() for s in props["sonar.sources"].split(",")]
    tests = [s.strip() for s in props["sonar.tests"].split(",")]
    assert sorted(sources) == sorted(f"{m}/src" for m in members)
    assert sorted(tests) == sorted(f"{m}/tests" for m in members)
    assert all((ROOT / d).is_dir() for d in sources + tests)
    assert props["sonar.python.coverage.reportPaths"] == "coverage.xml"
    assert props["sonar.python.version"] == "3.11"


def test_make_test_writes_the_report_sonar_reads_and_git_ignores_it() -> None:
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert "--cov-report=xml:coverage.xml" in script
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert {"coverage.xml", ".coverage"} <= set(ignored)
