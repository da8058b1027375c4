"""What the rendered overlays promise: probes, limits, drain, spreading, scaling, secrets, NATS."""

import re
from typing import Any

import pytest

from tests.deploy import kustomize
from tests.deploy.kustomize import find, one, overlay, pod_templates
from tests.deploy.network_policy import selects
from tests.deploy.workspace import ROOT, env_names, importable_from, module_of, secret_readers

SERVICES = ("connector", "router", "agent-runner", "admin-api")
IMAGE_PACKAGE = {
    "imgate/connector": "imgate-connector",
    "imgate/router": "imgate-router",
    "imgate/agent-runner": "imgate-agent-runner",
    "imgate/admin-api": "imgate-admin-api",
}
SECRET = "imgate-secrets"
SECRET_KEYS = {"database-url", "redis-url", "secret-keys", "admin-token", "postgres-password"}
DOCS = ROOT / "docs" / "deploy.md"


def container(template: dict[str, Any]) -> dict[str, Any]:
    containers = template["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def image_package(image: str) -> str:
    """The workspace package an image reference was built from (registry and tag stripped)."""
    repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    for name, package in IMAGE_PACKAGE.items():
        if repository == name or repository.endswith("/" + name):
            return package
    raise AssertionError(f"{image} is not one of the project's images")


def env_of(objects: tuple[dict[str, Any], ...], template: dict[str, Any]) -> dict[str, Any]:
    """Every variable a container gets: its ConfigMaps' keys, then its own `env` (which wins)."""
    env: dict[str, Any] = {}
    for source in container(template).get("envFrom", []):
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container(template).get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def seconds_env(env: dict[str, Any], name: str) -> float:
    return float(env[name])


@pytest.fixture(params=kustomize.OVERLAYS)
def objects(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    return overlay(request.param)


def test_four_service_deployments_and_a_migration_job(objects: tuple[dict[str, Any], ...]) -> None:
    assert {d["metadata"]["name"] for d in find(objects, "Deployment")} >= set(SERVICES)
    job = one(objects, "Job", "migrate")
    argv = container(job["spec"]["template"])["command"]
    assert module_of(argv) == "imgate_common.db.migrate" and argv[3:] == ["upgrade"]
    assert "imgate_common" in importable_from(image_package(container(job["spec"]["template"])["image"]))


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_readiness_and_liveness_probes_that_exist(
    objects: tuple[dict[str, Any], ...], service: str
) -> None:
    spec = container(one(objects, "Deployment", service)["spec"]["template"])
    for kind in ("readinessProbe", "livenessProbe"):
        probe = spec[kind]
        assert probe.get("timeoutSeconds", 1) >= 3, f"{service} {kind}: the check needs its 2 s and start-up"
        if "exec" in probe:
            module = module_of(probe["exec"]["command"])
            assert module is not None and module.split(".")[0] in importable_from(
                image_package(spec["image"])
            )
            # Its existence is test_dockerfile.test_the_healthcheck_module_exists.
            assert module == "imgate_common.healthcheck"
        else:
            port = probe["httpGet"]["port"]
            assert port in {p["name"] for p in spec["ports"]}
            assert probe["httpGet"]["path"] in admin_routes()


def admin_routes() -> set[str]:
    from imgate_admin.health import router

    return {route.path for route in router.routes}  # type: ignore[attr-defined]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_requests_and_limits(objects: tuple[dict[str, Any], ...], service: str) -> None:
    resources = container(one(objects, "Deployment", service)["spec"]["template"])["resources"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[bound].keys(), f"{service} {bound}"


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_spreads_over_nodes(objects: tuple[dict[str, Any], ...], service: str) -> None:
    template = one(objects, "Deployment", service)["spec"]["template"]
    terms = template["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    term = terms[0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["labelSelector"], template["metadata"]["labels"])


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_locked_down(objects: tuple[dict[str, Any], ...], service: str) -> None:
    template = one(objects, "Deployment", service)["spec"]["template"]
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert pod["automountServiceAccountToken"] is False
    box = container(template)["securityContext"]
    assert box["readOnlyRootFilesystem"] is True and box["allowPrivilegeEscalation"] is False
    assert box["capabilities"]["drop"] == ["ALL"]


def test_the_runner_gets_longer_than_its_drain(objects: tuple[dict[str, Any], ...]) -> None:
    template = one(objects, "Deployment", "agent-runner")["spec"]["template"]
    drain = seconds_env(env_of(objects, template), "RUNNER_DRAIN_TIMEOUT_S")
    grace = template["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 30 and grace >= drain + 10


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_a_grace_period(objects: tuple[dict[str, Any], ...], service: str) -> None:
    template = one(objects, "Deployment", service)["spec"]["template"]
    assert template["spec"]["terminationGracePeriodSeconds"] >= 15


@pytest.mark.parametrize("service", ("router", "agent-runner"))
def test_router_and_runner_scale_with_an_hpa_that_owns_the_replicas(
    objects: tuple[dict[str, Any], ...], service: str
) -> None:
    hpa = one(objects, "HorizontalPodAutoscaler", service)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # A `replicas` in the Deployment would be reset by every apply, fighting the HPA.
    assert "replicas" not in one(objects, "Deployment", service)["spec"]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_a_disruption_budget_for_its_pods(
    objects: tuple[dict[str, Any], ...], service: str
) -> None:
    labels = one(objects, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
    budgets = [p for p in find(objects, "PodDisruptionBudget") if selects(p["spec"]["selector"], labels)]
    assert len(budgets) == 1 and budgets[0]["spec"]["maxUnavailable"] == 1


def test_selectors_match_their_pods(objects: tuple[dict[str, Any], ...]) -> None:
    templates = pod_templates(objects)
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            assert selects(obj["spec"]["selector"], obj["spec"]["template"]["metadata"]["labels"])
        if obj["kind"] == "Service":
            matching = [
                t
                for t in templates.values()
                if selects({"matchLabels": obj["spec"]["selector"]}, t["metadata"]["labels"])
            ]
            assert matching, f"Service {obj['metadata']['name']} selects no pod"
            for port in obj["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                names = {
                    p.get("name")
                    for t in matching
                    for c in t["spec"]["containers"]
                    for p in c.get("ports", [])
                }
                numbers = {
                    p["containerPort"]
                    for t in matching
                    for c in t["spec"]["containers"]
                    for p in c.get("ports", [])
                }
                assert target in names | numbers, f"Service {obj['metadata']['name']}: no port {target}"


def test_secrets_are_referenced_never_rendered(objects: tuple[dict[str, Any], ...]) -> None:
    assert not find(objects, "Secret"), "a Secret with values would be committed to the repository"
    text = DOCS.read_text()
    for template in pod_templates(objects).values():
        for item in container(template).get("env", []):
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == SECRET and ref["key"] in SECRET_KEYS, ref
                assert f"`{ref['key']}`" in text, f"docs/deploy.md does not explain the key {ref['key']}"


@pytest.mark.parametrize("workload", (*SERVICES, "migrate"))
def test_every_variable_given_is_one_the_workload_reads(
    objects: tuple[dict[str, Any], ...], workload: str
) -> None:
    template = pod_templates(objects)[workload]
    unknown = set(env_of(objects, template)) - env_names(workload)
    assert not unknown, f"{workload} would ignore {sorted(unknown)}"


def test_every_service_that_decrypts_secrets_gets_the_one_key_ring(
    objects: tuple[dict[str, Any], ...],
) -> None:
    # The router among them: it decrypts the LDAP bind password and ERP key of user mappings.
    assert {"router", "admin-api"} <= secret_readers()
    templates = pod_templates(objects)
    holders = {name for name, t in templates.items() if "IMGATE_SECRET_KEYS" in env_of(objects, t)}
    assert holders == secret_readers()
    for name in holders:
        ref = env_of(objects, templates[name])["IMGATE_SECRET_KEYS"]
        assert ref == {"secretKeyRef": {"name": SECRET, "key": "secret-keys"}}, name


def nats(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return one(objects, "StatefulSet", "nats")


def stream_replicas(objects: tuple[dict[str, Any], ...]) -> set[int]:
    return {int(env_of(objects, pod_templates(objects)[s])["IMGATE_STREAM_REPLICAS"]) for s in SERVICES}


def nats_conf(objects: tuple[dict[str, Any], ...]) -> str:
    volumes = nats(objects)["spec"]["template"]["spec"]["volumes"]
    name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)
    return one(objects, "ConfigMap", name)["data"]["nats.conf"]


def test_prod_runs_a_three_node_jetstream_cluster_with_three_replica_streams() -> None:
    objects = overlay("prod")
    statefulset = nats(objects)
    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    claim = statefulset["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    affinity = statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert (
        affinity["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"]
        == "kubernetes.io/hostname"
    )
    conf = nats_conf(objects)
    assert "jetstream" in conf and "cluster" in conf
    routes = re.findall(r"nats://(nats-\d)\.nats-headless:6222", conf)
    assert routes == [f"nats-{i}" for i in range(3)]
    headless = one(objects, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert stream_replicas(objects) == {3}
    assert one(objects, "PodDisruptionBudget", "nats")["spec"]["maxUnavailable"] == 1


def test_dev_runs_one_nats_node_with_single_replica_streams() -> None:
    objects = overlay("dev")
    assert nats(objects)["spec"]["replicas"] == 1
    assert "cluster" not in nats_conf(objects)
    assert "jetstream" in nats_conf(objects)
    assert stream_replicas(objects) == {1}
    assert nats(objects)["spec"]["volumeClaimTemplates"], "JetStream keeps its store on a volume"


def test_stores_are_in_cluster_for_dev_and_external_for_prod() -> None:
    dev, prod = overlay("dev"), overlay("prod")
    assert set(pod_templates(dev)) >= {"redis", "postgres"}
    assert not {"redis", "postgres"} & set(pod_templates(prod))


def test_every_config_map_reference_resolves(objects: tuple[dict[str, Any], ...]) -> None:
    names = {c["metadata"]["name"] for c in find(objects, "ConfigMap")}
    for template in pod_templates(objects).values():
        for c in template["spec"]["containers"]:
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in names
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in names


def test_project_images_are_pinned_to_a_tag_in_each_overlay(objects: tuple[dict[str, Any], ...]) -> None:
    for template in pod_templates(objects).values():
        image = container(template)["image"]
        if any(image.split(":")[0].endswith(name) for name in IMAGE_PACKAGE):
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


def test_everything_carries_the_part_of_label(objects: tuple[dict[str, Any], ...]) -> None:
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "imgate", obj["metadata"]["name"]
    for template in pod_templates(objects).values():
        assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == "imgate"
