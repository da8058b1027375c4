"""Each workload reaches exactly what it needs, evaluated on the rendered NetworkPolicies."""

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.kustomize import find, overlay, pod_templates
from tests.deploy.network_policy import Endpoint, Policies

NAMESPACE = {"dev": "imgate-dev", "prod": "imgate"}
WORKLOADS = ("connector", "router", "agent-runner", "admin-api", "migrate")
# Destinations outside the cluster, as addresses. The prod stores sit in a private range, as a
# managed database in the cluster's VPC would.
DINGTALK = Endpoint.external("203.0.113.10")
METADATA = Endpoint.external("169.254.169.254")
PRIVATE_HOST = Endpoint.external("10.20.30.40")
PROD_POSTGRES = Endpoint.external("10.20.0.5")
PROD_REDIS = Endpoint.external("10.20.0.6")
KUBE_DNS = Endpoint.pod("kube-system", {"k8s-app": "kube-dns"})
# What each workload needs (DESIGN.md: who talks to whom); everything else must be shut.
NEEDS = {
    "connector": {"dns", "nats", "redis", "postgres", "https", "otlp"},
    "router": {"dns", "nats", "redis", "postgres", "otlp"},
    "agent-runner": {"dns", "nats", "redis", "postgres", "https", "otlp"},
    "admin-api": {"dns", "nats", "redis", "postgres", "https", "otlp"},
    "migrate": {"dns", "postgres"},
}
# Prometheus lives in the namespace the base names `monitoring`; so does prod's collector.
MONITORING = "monitoring"
PROMETHEUS = Endpoint.pod(MONITORING, {"app.kubernetes.io/name": "prometheus"})
# Where each service serves /metrics (the admin API on its HTTP port).
METRICS = {"connector": 9101, "router": 9102, "agent-runner": 9103, "admin-api": 8780}


def pods(objects: tuple[dict[str, Any], ...], namespace: str) -> dict[str, Endpoint]:
    return {
        name: Endpoint.pod(namespace, template["metadata"]["labels"])
        for name, template in pod_templates(objects).items()
    }


def network(env: str) -> tuple[Policies, dict[str, Endpoint], dict[str, tuple[Endpoint, int, str]]]:
    objects = overlay(env)
    namespace = NAMESPACE[env]
    policies = Policies(namespace, find(objects, "NetworkPolicy"))
    found = pods(objects, namespace)
    stores = (
        {"postgres": (found["postgres"], 5432), "redis": (found["redis"], 6379)}
        if env == "dev"
        else {"postgres": (PROD_POSTGRES, 5432), "redis": (PROD_REDIS, 6379)}
    )
    targets = {
        "dns": (KUBE_DNS, 53, "UDP"),
        "nats": (found["nats"], 4222, "TCP"),
        "https": (DINGTALK, 443, "TCP"),
        "otlp": otlp_receiver(objects, namespace, found),
        **{k: (endpoint, port, "TCP") for k, (endpoint, port) in stores.items()},
    }
    return policies, found, targets


def otlp_receiver(
    objects: tuple[dict[str, Any], ...], namespace: str, found: dict[str, Endpoint]
) -> tuple[Endpoint, int, str]:
    """The pod behind imgate-config's OTEL_EXPORTER_OTLP_ENDPOINT: a Service of the namespace
    (`jaeger`), or a pod in another one (`otel-collector.monitoring`)."""
    config = next(c for c in find(objects, "ConfigMap") if c["metadata"]["name"].startswith("imgate-config"))
    url = urlsplit(config["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    name, _, elsewhere = str(url.hostname).partition(".")
    if elsewhere:
        target = Endpoint.pod(elsewhere.split(".")[0], {"app.kubernetes.io/name": name})
    else:
        service = next(s for s in find(objects, "Service") if s["metadata"]["name"] == name)
        target = next(
            pod for pod in found.values() if dict(pod.labels).items() >= service["spec"]["selector"].items()
        )
        assert namespace == target.namespace
    return target, int(url.port or 4318), "TCP"


@pytest.mark.parametrize("env", NAMESPACE)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_each_workload_reaches_what_it_needs_and_nothing_else(env: str, workload: str) -> None:
    policies, found, targets = network(env)
    source = found[workload]
    allowed = {
        name
        for name, (target, port, proto) in targets.items()
        if policies.can_connect(source, target, port, proto)
    }
    assert allowed == NEEDS[workload]
    # Each side on its own too: no egress left open that only the receiver happens to refuse.
    sendable = {
        name
        for name, (target, port, proto) in targets.items()
        if policies.can_send(source, target, port, proto)
    }
    assert sendable == NEEDS[workload]
    # Never: the cloud metadata service, plain HTTP out, private hosts, the NATS route port.
    assert not policies.can_connect(source, METADATA, 80)
    assert not policies.can_connect(source, METADATA, 443)
    assert not policies.can_connect(source, DINGTALK, 80)
    assert not policies.can_connect(source, PRIVATE_HOST, 443)
    assert not policies.can_connect(source, found["nats"], 6222)
    assert not policies.can_connect(source, found["nats"], 8222)


@pytest.mark.parametrize("env", NAMESPACE)
def test_only_the_admin_api_accepts_connections(env: str) -> None:
    policies, found, _ = network(env)
    outsider = Endpoint.pod("ingress-nginx", {"app": "controller"})
    assert policies.can_connect(outsider, found["admin-api"], 8780)
    for workload in ("connector", "router", "agent-runner", "migrate"):
        for port in (80, 8080, 8780, *METRICS.values()):
            assert not policies.can_connect(outsider, found[workload], port)
            assert not policies.can_connect(found["admin-api"], found[workload], port)


@pytest.mark.parametrize("env", NAMESPACE)
def test_prometheus_in_the_monitoring_namespace_scrapes_each_metrics_port_only(env: str) -> None:
    policies, found, _ = network(env)
    for workload, port in METRICS.items():
        assert policies.can_connect(PROMETHEUS, found[workload], port), f"{workload}:{port}"
        for other in set(METRICS.values()) - {port, 8780}:
            assert not policies.can_connect(PROMETHEUS, found[workload], other), f"{workload}:{other}"
    for workload in ("migrate", "nats", "redis", "postgres"):
        for port in (*METRICS.values(), 4222, 5432, 6379, 8222):
            if workload in found:
                assert not policies.can_connect(PROMETHEUS, found[workload], port), f"{workload}:{port}"
    # The same pod in any other namespace, or a stranger in this one, is refused.
    for stranger in (
        Endpoint.pod("default", dict(PROMETHEUS.labels)),
        Endpoint.pod(NAMESPACE[env], {"app.kubernetes.io/name": "debug"}),
    ):
        for workload, port in METRICS.items():
            if workload != "admin-api":
                assert not policies.can_connect(stranger, found[workload], port), f"{workload}:{port}"


@pytest.mark.parametrize("env", NAMESPACE)
def test_traces_leave_on_the_otlp_ports_only(env: str) -> None:
    policies, found, targets = network(env)
    receiver, _, _ = targets["otlp"]
    for workload in METRICS:
        for port in (4317, 4318):  # gRPC or HTTP, whichever OTEL_EXPORTER_OTLP_PROTOCOL picks
            assert policies.can_connect(found[workload], receiver, port), f"{workload} → {port}"
        assert not policies.can_connect(found[workload], receiver, 16686)
    assert not policies.can_send(found["migrate"], receiver, 4318)
    assert not policies.can_send(found["nats"], receiver, 4318)


def test_dev_jaeger_takes_traces_from_the_services_and_queries_from_monitoring() -> None:
    policies, found, _ = network("dev")
    jaeger = found["jaeger"]
    stranger = Endpoint.pod("imgate-dev", {"app.kubernetes.io/name": "debug"})
    assert not policies.can_connect(stranger, jaeger, 4318)
    assert not policies.can_connect(found["migrate"], jaeger, 4318)
    grafana = Endpoint.pod(MONITORING, {"app.kubernetes.io/name": "grafana"})
    assert policies.can_connect(grafana, jaeger, 16686)
    assert not policies.can_connect(stranger, jaeger, 16686)
    # It reaches nothing but DNS.
    assert not policies.can_send(jaeger, DINGTALK, 443)
    assert not policies.can_send(jaeger, found["nats"], 4222)


@pytest.mark.parametrize("env", NAMESPACE)
def test_nats_is_reached_only_by_the_services_and_its_peers(env: str) -> None:
    policies, found, _ = network(env)
    outsider = Endpoint.pod(NAMESPACE[env], {"app.kubernetes.io/name": "debug"})
    assert not policies.can_connect(outsider, found["nats"], 4222)
    assert not policies.can_connect(
        Endpoint.pod("other", {"app.kubernetes.io/name": "router"}), found["nats"], 4222
    )
    peer = Endpoint.pod(NAMESPACE[env], dict(found["nats"].labels))
    assert policies.can_connect(peer, found["nats"], 6222) == (env == "prod")


def test_in_cluster_stores_refuse_everyone_else() -> None:
    policies, found, _ = network("dev")
    assert not policies.can_connect(found["migrate"], found["redis"], 6379)
    assert not policies.can_connect(found["nats"], found["postgres"], 5432)
    assert not policies.can_connect(
        Endpoint.pod("imgate-dev", {"app.kubernetes.io/name": "debug"}), found["postgres"], 5432
    )


def test_the_evaluator_denies_by_default_and_honours_a_rule() -> None:
    """The evaluator itself, on two hand-made policies."""
    deny = {"spec": {"podSelector": {}, "policyTypes": ["Egress"]}}
    allow = {
        "spec": {
            "podSelector": {"matchLabels": {"app": "a"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": 80}]}],
        }
    }
    a, b = Endpoint.pod("ns", {"app": "a"}), Endpoint.pod("ns", {"app": "b"})
    assert Policies("ns", []).can_connect(a, b, 80)
    assert not Policies("ns", [deny]).can_connect(a, b, 80)
    assert Policies("ns", [deny, allow]).can_connect(a, b, 80)
    assert not Policies("ns", [deny, allow]).can_connect(a, b, 81)
    assert not Policies("ns", [deny, allow]).can_connect(b, a, 80)
    assert not Policies("ns", [deny, allow]).can_connect(a, Endpoint.pod("other", {"app": "b"}), 80)
