"""What the rendered overlays offer a monitoring stack: metrics ports and annotations, the OTLP
endpoint, the dashboard ConfigMap, and the opt-in PodMonitors for the Prometheus Operator."""

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy import kustomize
from tests.deploy.kustomize import find, one, overlay, pod_templates
from tests.deploy.network_policy import selects
from tests.deploy.test_k8s_manifests import SECRET, SECRET_KEYS, admin_routes, container, env_of
from tests.deploy.workspace import ROOT, metrics_port

SCRAPED = ("connector", "router", "agent-runner")  # a metrics port of their own
DASHBOARD = ROOT / "deploy" / "observability" / "grafana" / "dashboards" / "imgate.json"
OPERATOR_FIXTURE = Path(__file__).parent / "overlays" / "prometheus-operator"
POD_MONITOR_FIELDS = {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}
ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "scheme", "authorization", "relabelings"}


@pytest.fixture(params=kustomize.OVERLAYS)
def objects(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    return overlay(request.param)


def ports(template: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(template).get("ports", [])}


@pytest.mark.parametrize("service", SCRAPED)
def test_each_bus_service_declares_its_metrics_port_and_annotations(
    objects: tuple[dict[str, Any], ...], service: str
) -> None:
    template = one(objects, "Deployment", service)["spec"]["template"]
    env = env_of(objects, template)
    port = metrics_port(service, env)
    assert ports(template) == {"metrics": port}
    assert env.get("IMGATE_METRICS_HOST", "0.0.0.0") == "0.0.0.0", "the scraper comes from outside the pod"
    annotations = template["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


def test_the_admin_api_is_not_scraped_by_annotation(objects: tuple[dict[str, Any], ...]) -> None:
    # Its /metrics wants the bearer token, which an annotation-driven scrape cannot send.
    template = one(objects, "Deployment", "admin-api")["spec"]["template"]
    assert "/metrics" in admin_routes()
    assert ports(template)["http"] == metrics_port("admin-api", env_of(objects, template))
    assert (template["metadata"].get("annotations") or {}).get("prometheus.io/scrape") != "true"


def otlp_endpoint(objects: tuple[dict[str, Any], ...], service: str) -> str:
    template = one(objects, "Deployment", service)["spec"]["template"]
    return str(env_of(objects, template)["OTEL_EXPORTER_OTLP_ENDPOINT"])


def test_every_service_sends_traces_to_one_otlp_endpoint(objects: tuple[dict[str, Any], ...]) -> None:
    endpoints = {otlp_endpoint(objects, s) for s in (*SCRAPED, "admin-api")}
    assert len(endpoints) == 1
    url = urlsplit(endpoints.pop())
    assert url.scheme == "http" and url.port == 4318 and url.path in ("", "/"), "OTLP/HTTP base URL"


def test_the_dev_endpoint_is_its_own_jaeger() -> None:
    objects = overlay("dev")
    url = urlsplit(otlp_endpoint(objects, "router"))
    service = one(objects, "Service", str(url.hostname))
    port = next(p for p in service["spec"]["ports"] if p["port"] == url.port)
    jaeger = pod_templates(objects)["jaeger"]
    assert selects({"matchLabels": service["spec"]["selector"]}, jaeger["metadata"]["labels"])
    assert ports(jaeger)[port["targetPort"]] == 4318
    assert container(jaeger)["image"].split(":")[-1][0].isdigit(), "a pinned Jaeger"


def test_prod_sends_traces_to_the_monitoring_namespace() -> None:
    host = str(urlsplit(otlp_endpoint(overlay("prod"), "router")).hostname)
    name, _, namespace = host.partition(".")
    assert name and namespace.split(".")[0] == "monitoring"


@pytest.mark.parametrize("env", kustomize.OVERLAYS)
def test_the_dashboard_is_a_config_map_for_grafanas_sidecar(env: str) -> None:
    maps = [c for c in find(overlay(env), "ConfigMap") if "imgate.json" in c.get("data", {})]
    assert len(maps) == 1
    dashboard = maps[0]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["name"] == "imgate-grafana-dashboard", "a fixed name, no hash"
    assert dashboard["data"]["imgate.json"] == DASHBOARD.read_text()
    json.loads(dashboard["data"]["imgate.json"])


# -- the Prometheus Operator component --------------------------------------------------------


@pytest.fixture(scope="module")
def with_operator() -> tuple[dict[str, Any], ...]:
    return kustomize.render_dir(OPERATOR_FIXTURE)


def test_the_component_adds_pod_monitors_and_nothing_else(with_operator: tuple[dict[str, Any], ...]) -> None:
    # So the rest is the prod overlay, schema-checked in test_kustomize; no schema for the
    # operator's CRDs is at hand offline, so the PodMonitors get the checks below instead.
    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    prod = {key(o): o for o in overlay("prod")}
    added = {key(o): o for o in with_operator if key(o) not in prod}
    assert {kind for kind, _ in added} == {"PodMonitor"}
    for obj in with_operator:
        if key(obj) in prod:
            assert obj == prod[key(obj)], f"the component changed {key(obj)}"


def test_the_pod_monitors_cover_every_service_on_its_metrics_port(
    with_operator: tuple[dict[str, Any], ...],
) -> None:
    monitors = find(with_operator, "PodMonitor")
    covered: dict[str, dict[str, Any]] = {}
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["namespace"] == "imgate"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        spec = monitor["spec"]
        assert spec.keys() <= POD_MONITOR_FIELDS
        for name in ("connector", "router", "agent-runner", "admin-api"):
            template = one(with_operator, "Deployment", name)["spec"]["template"]
            if selects(spec["selector"], template["metadata"]["labels"]):
                assert name not in covered, f"{name} is scraped twice"
                for endpoint in spec["podMetricsEndpoints"]:
                    assert endpoint.keys() <= ENDPOINT_FIELDS
                    assert endpoint["port"] in ports(template), f"{name} has no port {endpoint['port']}"
                    assert endpoint.get("path", "/metrics") == "/metrics"
                    covered[name] = endpoint
    assert set(covered) == {"connector", "router", "agent-runner", "admin-api"}
    for name in SCRAPED:
        assert "authorization" not in covered[name]
    credentials = covered["admin-api"]["authorization"]["credentials"]
    assert credentials["name"] == SECRET and credentials["key"] in SECRET_KEYS
    assert covered["admin-api"]["authorization"].get("type", "Bearer") == "Bearer"
