"""Each workload reaches exactly what it needs, evaluated on the rendered NetworkPolicies."""

from typing import Any

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
    "connector": {"dns", "nats", "redis", "postgres", "https"},
    "router": {"dns", "nats", "redis", "postgres"},
    "agent-runner": {"dns", "nats", "redis", "postgres", "https"},
    "admin-api": {"dns", "nats", "redis", "postgres", "https"},
    "migrate": {"dns", "postgres"},
}


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
        **{k: (endpoint, port, "TCP") for k, (endpoint, port) in stores.items()},
    }
    return policies, found, targets


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
        for port in (80, 8080, 8780):
            assert not policies.can_connect(outsider, found[workload], port)
            assert not policies.can_connect(found["admin-api"], found[workload], port)


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
