"""``infra/k8s``: both overlays build with kustomize and validate against Kubernetes schemas."""

from __future__ import annotations

import atexit
import base64
import functools
import importlib
import importlib.util
import ipaddress
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
TARGET_VERSION = "1.34.0"
SERVICES = {
    "signing": 8001,
    "device-management": 8002,
    "ingest-bridge": 8004,
    "stream-agents": 6066,
    "monitoring-api": 8003,
}
INFRA = {"redpanda", "mongodb", "postgres", "redis", "rabbitmq", "mosquitto"}


def kustomize_at(path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(path)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(path)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed")
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@functools.cache
def deployable_copy() -> Path:
    """infra/k8s with the secret files `scripts/generate-env.sh` writes (never committed)."""
    root = Path(tempfile.mkdtemp(prefix="k8s-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    shutil.copytree(K8S, root / "infra" / "k8s", ignore=shutil.ignore_patterns("*.env"))
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "generate-env.sh"), str(root)],
        check=True,
        capture_output=True,
    )
    return root / "infra" / "k8s"


def kustomize(overlay: str) -> list[dict[str, Any]]:
    result = kustomize_at(deployable_copy() / "overlays" / overlay)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module", params=["dev", "prod"])
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_manifests_validate_against_kubernetes_schemas(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    _, docs = overlay
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, TARGET_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_every_service_is_deployed_safely(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    deployments = of_kind(docs, "Deployment")
    services = of_kind(docs, "Service")
    expected = set(SERVICES) | ({"simulator"} if name == "dev" else set())
    assert set(deployments) == expected
    for dep_name, dep in deployments.items():
        spec = dep["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001  # the images' user
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests)
        if dep_name == "simulator":
            continue
        container = spec["containers"][0]
        port = SERVICES[dep_name]
        assert container["ports"][0]["containerPort"] == port
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        assert "livenessProbe" in container
        # Every service is reachable under its own name on its port.
        assert services[dep_name]["spec"]["ports"][0]["port"] == port
        assert services[dep_name]["spec"]["selector"] == {"app.kubernetes.io/name": dep_name}
        env_sources = {next(iter(s)) for s in container["envFrom"]}
        assert env_sources == {"configMapRef", "secretRef"}
    for migrating in ("signing", "device-management"):
        init = deployments[migrating]["spec"]["template"]["spec"]["initContainers"]
        assert init[0]["args"] == ["migrate"]


def test_autoscalers(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {"ingest-bridge", "stream-agents", "monitoring-api"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_ingress_carries_the_gateway_routes(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    routes: dict[str, tuple[str, int]] = {}
    annotations: dict[str, dict[str, str]] = {}
    for ingress in of_kind(docs, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                routes[path["path"]] = (backend["name"], backend["port"]["number"])
                annotations[path["path"]] = ingress["metadata"]["annotations"]
    assert routes == {
        "/users": ("signing", 8001),
        "/users/auth": ("signing", 8001),
        "/.well-known/jwks.json": ("signing", 8001),
        "/devices": ("device-management", 8002),
        "/monitoring": ("monitoring-api", 8003),
        "/dashboard": ("monitoring-api", 8003),
        "/ws/monitoring": ("monitoring-api", 8003),
        "/ingest": ("ingest-bridge", 8004),
    }
    assert "nginx.ingress.kubernetes.io/limit-rpm" in annotations["/users/auth"]
    assert "nginx.ingress.kubernetes.io/limit-rpm" not in annotations["/users"]
    assert (
        int(annotations["/ws/monitoring"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    )


def test_dev_runs_its_infrastructure_as_statefulsets() -> None:
    docs = kustomize("dev")
    sets = of_kind(docs, "StatefulSet")
    assert set(sets) == INFRA
    services = of_kind(docs, "Service")
    for name, sts in sets.items():
        assert sts["spec"]["volumeClaimTemplates"], f"{name} keeps no data"
        assert name in services
    config = of_kind(docs, "ConfigMap")["platform-config"]["data"]
    host = config["IOT_KAFKA_BOOTSTRAP"].split(":")[0]
    assert host in sets
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"iot-dev"}


def test_prod_takes_infrastructure_and_secrets_from_outside() -> None:
    docs = kustomize("prod")
    assert not of_kind(docs, "StatefulSet")
    assert not of_kind(docs, "Secret"), "prod must not apply secret templates over real secrets"
    assert set(of_kind(docs, "PodDisruptionBudget")) == set(SERVICES)
    for dep in of_kind(docs, "Deployment").values():
        for container in dep["spec"]["template"]["spec"]["containers"]:
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), image
    signing = of_kind(docs, "Deployment")["signing"]["spec"]["template"]["spec"]["containers"][0]
    key = next(e for e in signing["env"] if e["name"] == "SIGNING_PRIVATE_KEY_PEM")
    assert key["valueFrom"]["secretKeyRef"]["optional"] is False
    namespace = of_kind(docs, "Namespace")["iot"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_secret_templates_hold_no_real_secret() -> None:
    docs = [d for d in yaml.safe_load_all((K8S / "base" / "secrets.yaml").read_text()) if d]
    for doc in docs:
        for key, value in doc.get("stringData", {}).items():
            if key in {"IOT_ADMIN_EMAIL"}:
                continue
            assert "CHANGE_ME" in value, f"{key} looks like a real value"


def test_operator_references_are_documented() -> None:
    operators = K8S / "overlays" / "prod" / "operators"
    kinds = {}
    for path in operators.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        kinds[doc["kind"]] = doc["apiVersion"]
    assert {
        "Redpanda",
        "Cluster",
        "MongoDBCommunity",
        "RabbitmqCluster",
        "RedisReplication",
    } <= set(kinds)
    readme = (K8S / "README.md").read_text()
    for name in ("Redpanda", "MongoDB", "PostgreSQL", "Redis", "RabbitMQ"):
        assert name in readme


def test_dev_overlay_commits_no_secret_and_refuses_to_build_without_generated_ones(
    tmp_path: Path,
) -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / "dev" / "kustomization.yaml").read_text())
    for generator in kustomization["secretGenerator"]:
        assert "literals" not in generator, f"{generator['name']} commits values"
    bare = tmp_path / "k8s"
    shutil.copytree(K8S, bare, ignore=shutil.ignore_patterns("*.env"))
    result = kustomize_at(bare / "overlays" / "dev")
    assert result.returncode != 0
    assert "secrets.env" in result.stderr or "credentials.env" in result.stderr


def test_redis_requires_a_password() -> None:
    docs = kustomize("dev")
    assert "IOT_REDIS_URL" not in of_kind(docs, "ConfigMap")["platform-config"]["data"]
    secrets = of_kind(docs, "Secret")
    redis_url = base64.b64decode(secrets["platform-secrets"]["data"]["IOT_REDIS_URL"]).decode()
    password = base64.b64decode(secrets["infra-credentials"]["data"]["redis-password"]).decode()
    assert redis_url == f"redis://:{password}@redis:6379/0"
    redis = of_kind(docs, "StatefulSet")["redis"]["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in redis["env"]}
    assert env == {"REDIS_PASSWORD": "redis-password", "REDISCLI_AUTH": "redis-password"}
    prod = of_kind(kustomize("prod"), "ConfigMap")["platform-config"]["data"]
    assert "IOT_REDIS_URL" not in prod  # with its password, from the secret manager


@pytest.mark.parametrize(
    "module",
    ["signing.config:SigningSettings", "device_management.config:DeviceManagementSettings"],
)
def test_services_refuse_the_secret_templates_as_they_are(
    monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    """A cluster that applied base/secrets.yaml without replacing it does not start."""
    path, _, name = module.partition(":")
    settings_class = getattr(importlib.import_module(path), name)
    (template, *_) = [
        d for d in yaml.safe_load_all((K8S / "base" / "secrets.yaml").read_text()) if d
    ]
    monkeypatch.delenv("IOT_ALLOW_DEV_DEFAULTS")
    for key, value in template["stringData"].items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="refusing to start with development defaults") as info:
        settings_class()
    for setting in ("internal_token", "rabbitmq_url", "redis_url"):
        assert setting in str(info.value)


def test_forwarded_addresses_are_trusted_from_named_networks_only() -> None:
    for overlay in ("dev", "prod"):
        config = of_kind(kustomize(overlay), "ConfigMap")["platform-config"]["data"]
        trusted = config["SIGNING_FORWARDED_ALLOW_IPS"].split(",")
        assert "*" not in trusted and all(ipaddress.ip_network(t) for t in trusted)
        assert "*" not in config["MONITORING_API_TRUSTED_PROXIES"]


def test_dev_mosquitto_runs_compose_s_config_with_its_accounts_written_first() -> None:
    """The same broker configuration as compose (anonymous refused, dynamic security), and
    the same init step, from the platform's secrets, before the broker starts."""
    docs = kustomize("dev")
    shipped = (ROOT / "infra" / "mosquitto" / "mosquitto.conf").read_text()
    assert of_kind(docs, "ConfigMap")["mosquitto-config"]["data"]["mosquitto.conf"] == shipped
    pod = of_kind(docs, "StatefulSet")["mosquitto"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"].startswith("iot/device-management") and init["args"][0] == "mqtt-config"
    assert {"secretRef": {"name": "platform-secrets"}} in init["envFrom"]
    assert pod["containers"][0]["args"] == ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
    # MQTT over TLS: the certificate and key from the mosquitto-tls Secret, group-readable by
    # the broker only; the Service publishes 8883 beside 1883.
    (container,) = pod["containers"]
    assert {"name": "tls", "containerPort": 8883} in container["ports"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["tls"] == "/mosquitto/tls"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"] == {"secretName": "mosquitto-tls", "defaultMode": 0o440}
    assert pod["securityContext"]["fsGroup"] == 1883
    secret = of_kind(docs, "Secret")["mosquitto-tls"]
    assert secret["type"] == "kubernetes.io/tls" and {"tls.crt", "tls.key"} <= set(secret["data"])
    assert b"BEGIN CERTIFICATE" in base64.b64decode(secret["data"]["tls.crt"])
    ports = {p["port"] for p in of_kind(docs, "Service")["mosquitto"]["spec"]["ports"]}
    assert ports == {1883, 8883}
    secrets = (ROOT / "infra" / "k8s" / "base" / "secrets.yaml").read_text()
    assert "DEVICE_MANAGEMENT_MQTT_ADMIN_PASSWORD" in secrets
    assert "INGEST_BRIDGE_MQTT_PASSWORD" in secrets


def _container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container of the overlay starts with (envFrom, then env)."""
    maps, secrets = of_kind(docs, "ConfigMap"), of_kind(docs, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]]["data"])
        else:
            secret = secrets[source["secretRef"]["name"]]
            env.update({k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def test_dev_services_use_their_own_broker_accounts_and_provision_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """device-management keeps every device's MQTT client and RabbitMQ user, after its
    amqp-setup step wrote the service accounts; the bridge and device-management each log in
    to RabbitMQ as the account that step wrote for them, with the password it wrote."""
    from urllib.parse import urlsplit

    from device_management.config import DeviceManagementSettings
    from ingest_bridge.config import IngestBridgeSettings

    docs = kustomize("dev")
    deployments = of_kind(docs, "Deployment")
    dm_pod = deployments["device-management"]["spec"]["template"]["spec"]
    assert [c["args"][0] for c in dm_pod["initContainers"]] == ["migrate", "amqp-setup"]
    monkeypatch.delenv("IOT_ALLOW_DEV_DEFAULTS", raising=False)
    for container in dm_pod["initContainers"] + dm_pod["containers"]:
        env = _container_env(docs, container)
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            dm = DeviceManagementSettings()
        assert dm.mqtt_provisioning and dm.amqp_provisioning, container["name"]
        own = urlsplit(dm.rabbitmq_url.get_secret_value())
        assert own.username == dm.amqp_publisher_username
        assert own.password == dm.amqp_publisher_password.get_secret_value()
        assert urlsplit(dm.rabbitmq_management_url).hostname == "rabbitmq"
    bridge_env = _container_env(
        docs, deployments["ingest-bridge"]["spec"]["template"]["spec"]["containers"][0]
    )
    with monkeypatch.context() as m:
        for key, value in bridge_env.items():
            m.setenv(key, value)
        bridge = IngestBridgeSettings()
    url = urlsplit(bridge.rabbitmq_url.get_secret_value())
    assert url.username == dm.amqp_bridge_username
    assert url.password == dm.amqp_bridge_password.get_secret_value()


def pods_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Pods the overlay's workloads would create (scripts/k8s/pods-of.py, as `make k8s`)."""
    path = ROOT / "scripts" / "k8s" / "pods-of.py"
    spec = importlib.util.spec_from_file_location("pods_of", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pods: list[dict[str, Any]] = module.pods(docs)
    return pods


def test_every_pod_passes_the_checks_only_the_api_server_makes(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    """What `make k8s`'s server-side dry run refuses and the schemas do not: a mount of a volume
    the pod does not have (a StatefulSet's come from its claim templates), a port name over 15
    characters or used twice, a probe on a port name the container does not declare."""
    name, docs = overlay
    pods = pods_of(docs)
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob")]
    assert len(pods) == len(workloads) > 0
    for pod in pods:
        where = f"{name}: {pod['metadata']['name']}"
        volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}/{container['name']}: {mount['name']}"
            ports = [p["name"] for p in container.get("ports", []) if "name" in p]
            assert len(ports) == len(set(ports)), f"{where}/{container['name']}: {ports}"
            for port in ports:
                assert len(port) <= 15, f"{where}/{container['name']}: port name {port!r}"
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                action = container.get(probe, {})
                target = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
                if isinstance(target, str):
                    assert target in ports, f"{where}/{container['name']}: {probe} on {target!r}"


def test_a_statefulset_pod_mounts_its_claim_templates() -> None:
    # The dev overlay's infrastructure mounts `data`, which only its volumeClaimTemplates give.
    pods = {p["metadata"]["name"]: p for p in pods_of(kustomize("dev"))}
    postgres = pods["statefulset-postgres"]["spec"]
    claim = next(v for v in postgres["volumes"] if v["name"] == "data")
    assert claim["persistentVolumeClaim"] == {"claimName": "data-postgres-0"}


def test_prod_mqtt_clients_speak_tls_to_the_operated_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bridge and device-management reach the operated Mosquitto on 8883 with TLS,
    trusting the CA the operator puts in the mqtt-ca Secret (a pod without it does not start)."""
    from device_management.config import DeviceManagementSettings
    from ingest_bridge.config import IngestBridgeSettings

    docs = kustomize("prod")
    maps = of_kind(docs, "ConfigMap")
    deployments = of_kind(docs, "Deployment")
    for name, settings_cls in (
        ("ingest-bridge", IngestBridgeSettings),
        ("device-management", DeviceManagementSettings),
    ):
        pod = deployments[name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:  # the Secrets come from the secret manager
                env.update(maps[source["configMapRef"]["name"]]["data"])
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            settings = settings_cls()
        assert settings.mqtt_host == "mosquitto.mqtt.svc.cluster.local", name
        assert (settings.mqtt_port, settings.mqtt_tls) == (8883, True), name
        ca = Path(settings.mqtt_tls_ca_file or "")
        mounts = {v["name"]: v["mountPath"] for v in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert str(ca.parent) == mounts["mqtt-ca"], name
        secret = volumes["mqtt-ca"]["secret"]
        assert secret["secretName"] == "mqtt-ca" and secret["optional"] is False, name
        assert secret["items"] == [{"key": "ca.crt", "path": ca.name}], name
