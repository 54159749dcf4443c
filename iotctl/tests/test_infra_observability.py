"""Prometheus config and alerting rules (promtool) and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "infra" / "prometheus"
GRAFANA = ROOT / "infra" / "grafana"

PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "by",
    "without",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
    "histogram_quantile",
    "clamp_min",
    "clamp_max",
    "absent",
    "vector",
    "le",
    "bool",
    "offset",
    "topk",
    "bottomk",
    "delta",
    "deriv",
}


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (make test installs Debian's prometheus)")
    return tool


def run(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, check=False)


def test_prometheus_config_and_its_rules_check(tmp_path: Path) -> None:
    tool = promtool()
    # The config names its rules by their path inside the container; check the same files.
    copy = tmp_path / "prometheus"
    shutil.copytree(PROM, copy)
    config = copy / "prometheus.yml"
    config.write_text(config.read_text().replace("/etc/prometheus/", f"{copy}/"))
    result = run(tool, "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout + result.stderr)


def test_alerting_rules_check() -> None:
    result = run(promtool(), "check", "rules", "rules/platform.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerting_rules_fire_as_intended() -> None:
    result = run(promtool(), "test", "rules", "tests/platform_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((PROM / "rules" / "platform.yml").read_text())
    return [r for group in data["groups"] for r in group["rules"]]


def test_the_alerts_the_platform_needs_exist() -> None:
    names = {r["alert"] for r in rules()}
    for needed in (
        "ConsumerLagHigh",
        "DeadLetterRateHigh",
        "HttpErrorRateHigh",
        "IngestStalled",
        "OutboxBacklog",
    ):
        assert needed in names
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", expr))
    return {n for n in names if n not in PROMQL_WORDS and "_" in n}


def exported_metrics() -> str:
    sources = [p.read_text() for p in ROOT.glob("*/src/**/*.py")]
    return "\n".join(sources)


def base_name(metric: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", metric)


def check_metrics_exist(exprs: list[str]) -> None:
    code = exported_metrics()
    for expr in exprs:
        for metric in metric_names(expr):
            if metric.startswith("redpanda_") or metric == "up":
                continue
            name = base_name(metric)
            if f'"{name}"' not in code:
                pytest.fail(f"{metric} (in {expr.strip()[:60]}…) is exported by no service")


def test_rules_use_metrics_the_services_export() -> None:
    if not (ROOT / "ingest-bridge" / "src" / "ingest_bridge" / "metrics.py").exists():
        pytest.skip("the services have not landed")
    check_metrics_exist([r["expr"] for r in rules()])


def test_scrape_targets_are_the_services_on_their_ports() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]
    }
    expected = {
        "signing": "signing:8001",
        "device-management": "device-management:8002",
        "monitoring-api": "monitoring-api:8003",
        "ingest-bridge": "ingest-bridge:8004",
        "stream-agents": "stream-agents:6066",
    }
    for job, target in expected.items():
        assert targets[job] == target
        assert target.split(":")[0] in compose["services"]


# ---------------------------------------------------------------------------- Grafana


def dashboard() -> dict[str, Any]:
    data = json.loads((GRAFANA / "dashboards" / "pipeline.json").read_text())
    assert isinstance(data, dict)
    return data


def test_dashboard_json_is_well_formed() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"]
    assert isinstance(dash["schemaVersion"], int)
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == "prometheus"


def test_dashboard_covers_the_pipeline() -> None:
    titles = " | ".join(p["title"].lower() for p in dashboard()["panels"])
    for topic in ("ingest rate", "lag", "window latency", "alerts", "api latency"):
        assert topic in titles, topic


def test_dashboard_queries_use_exported_metrics() -> None:
    if not (ROOT / "ingest-bridge" / "src" / "ingest_bridge" / "metrics.py").exists():
        pytest.skip("the services have not landed")
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    check_metrics_exist(exprs)


def test_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    ds = sources["datasources"][0]
    assert ds["uid"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/platform.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./infra/grafana/dashboards:{path}:ro" in mounts
