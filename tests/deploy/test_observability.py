"""deploy/observability: the Prometheus and Grafana configuration and the dashboard, offline.

Prometheus must scrape every service where it listens, with the admin token from a file; Grafana
must find its data sources and the dashboard where compose mounts them; every query on the
dashboard must name series, and labels, that the services define (tests/deploy/metrics.py).
"""

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy import metrics, promql
from tests.deploy.test_compose import COMPOSE, IMGATE_SERVICES, with_defaults
from tests.deploy.workspace import ROOT, metrics_port

OBSERVABILITY = ROOT / "deploy" / "observability"
PROMETHEUS = OBSERVABILITY / "prometheus" / "prometheus.yml"
PROMETHEUS_K8S = OBSERVABILITY / "prometheus" / "kubernetes.yml"
GRAFANA = OBSERVABILITY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "imgate.json"
ROUTER_MAIN = ROOT / "services" / "router" / "imgate_router" / "main.py"
# Keys that would put a credential into a scrape config instead of a file.
INLINE_CREDENTIALS = {"credentials", "bearer_token", "password", "basic_auth"}
# What the dashboard must show (the issue's list), by the series that carry it.
MUST_SHOW = {
    "imgate_inbound_messages_total": "messages/s by result",
    "imgate_first_visible_text_seconds_bucket": "time to first visible text",
    "imgate_final_answer_seconds_bucket": "time to the final answer",
    "imgate_inbound_ack_seconds_bucket": "ACK latency",
    "imgate_runs_finished_total": "failures by category",
    "imgate_channel_connected": "channel health",
    "imgate_admin_channels": "channels by state",
    "imgate_platform_api_calls_total": "card API calls by status",
    "imgate_card_rate_limited_total": "rate-limit hits",
    "imgate_fallback_replies_total": "fallback replies",
    "imgate_runs_in_flight": "runs in flight",
    "imgate_router_queue_admissions_total": "queue admissions",
    "imgate_run_time_to_first_token_seconds_bucket": "model time to first token",
    "imgate_router_identity_lookups_total": "identity lookups",
    "imgate_channel_reconnects_total": "reconnects",
    "imgate_channel_lease_changes_total": "lease changes",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return load_yaml(COMPOSE)["services"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → host path (relative to the repository) of a service's bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = source
    return found


def host_file(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file a service sees at `container_path`, through a file or directory mount."""
    for target, source in mounts(service).items():
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return ROOT / source / Path(container_path).relative_to(target)
    return None


def walk(value: Any) -> list[dict[str, Any]]:
    """Every mapping inside a YAML document."""
    found = []
    if isinstance(value, dict):
        found.append(value)
        for item in value.values():
            found += walk(item)
    elif isinstance(value, list):
        for item in value:
            found += walk(item)
    return found


# -- Prometheus (compose) ---------------------------------------------------------------------


def scrape_targets(job: dict[str, Any]) -> list[tuple[str, int]]:
    """(host, port) of every static target and DNS name a job scrapes."""
    found = []
    for static in job.get("static_configs", []):
        for target in static["targets"]:
            host, _, port = target.rpartition(":")
            found.append((host, int(port)))
    for dns in job.get("dns_sd_configs", []):
        assert dns.get("type", "SRV") == "A", "compose has no SRV records: use type A with a port"
        found += [(name, int(dns["port"])) for name in dns["names"]]
    return found


def test_the_compose_prometheus_runs_the_file_in_the_repository(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    assert host_file(prometheus, flag.partition("=")[2]) == PROMETHEUS
    assert any(v.endswith(":/prometheus") for v in prometheus["volumes"]), "the TSDB on a volume"


def test_prometheus_scrapes_every_service_where_it_listens(services: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS)
    scraped = {}
    for job in config["scrape_configs"]:
        for host, port in scrape_targets(job):
            assert host in services, f"job {job['job_name']} scrapes {host}, not a compose service"
            scraped[host] = (port, job)
    assert set(scraped) == set(IMGATE_SERVICES)
    for name, (port, job) in scraped.items():
        env = {k: with_defaults(str(v)) for k, v in services[name]["environment"].items()}
        assert port == metrics_port(name, env), f"{name} serves /metrics on {metrics_port(name, env)}"
        assert job.get("metrics_path", "/metrics") == "/metrics"


def test_the_admin_api_scrape_sends_the_token_from_a_compose_secret(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    from tests.deploy.test_k8s_manifests import admin_routes

    assert "/metrics" in admin_routes()
    config = load_yaml(PROMETHEUS)
    job = next(j for j in config["scrape_configs"] if ("admin-api", 8780) in scrape_targets(j))
    auth = job["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    # The file is a compose secret made from ADMIN_TOKEN, mounted into prometheus only, for
    # the image's user (nobody) only.
    mounted = secret_files(services["prometheus"])[auth["credentials_file"]]
    assert compose["secrets"][mounted["source"]] == {"environment": "ADMIN_TOKEN"}
    assert (mounted["uid"], mounted["gid"], mounted["mode"]) == ("65534", "65534", 0o400)
    holders = {n for n, s in services.items() if mounted["source"] in map(source_of, s.get("secrets", []))}
    assert holders == {"prometheus"}


def source_of(secret: str | dict[str, Any]) -> str:
    return secret if isinstance(secret, str) else secret["source"]


def secret_files(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Path in the container → the service's secret entry (long syntax) mounted there."""
    found = {}
    for secret in service.get("secrets", []):
        entry = {"source": secret} if isinstance(secret, str) else secret
        target = entry.get("target", entry["source"])
        found[target if target.startswith("/") else f"/run/secrets/{target}"] = entry
    return found


def test_no_scrape_config_holds_a_credential() -> None:
    for path in (PROMETHEUS, PROMETHEUS_K8S):
        for mapping in walk(load_yaml(path)):
            assert not INLINE_CREDENTIALS & mapping.keys(), f"{path.name}: {mapping}"


# -- Prometheus (Kubernetes, plain) -----------------------------------------------------------


def test_the_kubernetes_scrape_jobs_read_the_annotations_the_pods_carry() -> None:
    from tests.deploy.kustomize import one, overlay

    jobs = {j["job_name"]: j for j in load_yaml(PROMETHEUS_K8S)["scrape_configs"]}
    sources = {s for j in jobs.values() for r in j["relabel_configs"] for s in r.get("source_labels", [])}
    template = one(overlay("prod"), "Deployment", "router")["spec"]["template"]
    for key in template["metadata"]["annotations"]:
        meta = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
        assert meta in sources, f"no job reads the annotation {key}"
    admin = jobs["imgate-admin-api"]
    assert admin["authorization"]["credentials_file"].startswith("/")
    keep = {r["regex"] for r in admin["relabel_configs"] if r.get("action") == "keep"}
    admin_pod = one(overlay("prod"), "Deployment", "admin-api")["spec"]["template"]
    assert admin_pod["metadata"]["labels"]["app.kubernetes.io/name"] in keep
    assert {p["name"] for p in admin_pod["spec"]["containers"][0]["ports"]} & keep


# -- Grafana ----------------------------------------------------------------------------------


def test_grafana_finds_its_provisioning_and_the_dashboard(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    for path in (GRAFANA / "provisioning").rglob("*.yml"):
        inside = "/etc/grafana/provisioning/" + path.relative_to(GRAFANA / "provisioning").as_posix()
        assert host_file(grafana, inside) == path, f"grafana does not see {path.relative_to(ROOT)}"
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "imgate.yml")["providers"]
    for provider in providers:
        folder = host_file(grafana, provider["options"]["path"])
        assert folder is not None and folder.is_dir()
        assert DASHBOARD.parent == folder
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_file(grafana, home) == DASHBOARD


def test_grafana_data_sources_name_compose_services_and_their_ports(services: dict[str, Any]) -> None:
    container_ports = {
        name: {int(str(m).rsplit(":", 1)[-1]) for m in s.get("ports", [])} for name, s in services.items()
    }
    sources = load_yaml(GRAFANA / "provisioning" / "datasources" / "imgate.yml")["datasources"]
    assert {s["type"] for s in sources} == {"prometheus", "jaeger"}
    for source in sources:
        url = urlsplit(source["url"])
        assert url.hostname in services, source["url"]
        assert url.port in container_ports[url.hostname], f"{url.hostname} listens on {url.port}?"
        assert source["uid"], "a fixed uid"


def test_grafana_holds_no_password_and_admits_viewers_only(services: dict[str, Any]) -> None:
    env = {k: with_defaults(str(v)) for k, v in services["grafana"]["environment"].items()}
    assert not {k for k in env if "PASSWORD" in k or "SECRET" in k}, "no credential in the file"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    # No admin with Grafana's well-known default password, and no way to log in as one.
    assert env["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    assert env["GF_AUTH_DISABLE_LOGIN_FORM"] == "true" and env["GF_AUTH_BASIC_ENABLED"] == "false"


# -- the dashboard ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found += panel.get("panels", [])  # a collapsed row holds its panels
    return found


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query on the dashboard, template variables included."""
    found = [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text)
            assert match, f"variable {variable['name']}: {text}"
            found.append((f"${variable['name']}", f"{match.group(1)}{{{match.group(2)}!=''}}"))
    return found


def test_the_dashboard_has_a_fixed_uid_and_picks_prometheus_by_variable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "imgate-overview" and len(dashboard["uid"]) <= 40
    assert dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    assert "id" not in dashboard or dashboard["id"] is None, "an id belongs to one Grafana"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    uses = [p.get("datasource") for p in panels(dashboard) if p["type"] != "row"]
    uses += [t.get("datasource") for p in panels(dashboard) for t in p.get("targets", [])]
    uses += [v["datasource"] for v in variables.values() if v["type"] == "query"]
    assert uses and all(u == {"type": "prometheus", "uid": "${datasource}"} for u in uses), uses


def test_the_dashboard_layout_is_sound(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        assert panel["type"] in {"row", "timeseries", "stat", "state-timeline", "bargauge"}
        assert panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), f"{panel['title']}: refIds repeat"
        assert (panel["type"] == "row") == (not refs), f"{panel['title']}: no query"


def test_every_query_names_series_and_labels_the_services_define(dashboard: dict[str, Any]) -> None:
    defined = metrics.defined()
    for title, expr in queries(dashboard):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), title
        query = promql.read(expr)
        assert query.selectors, f"{title}: selects nothing: {expr}"
        labels: set[str] = set(metrics.TARGET_LABELS)
        for name, matchers in query.selectors:
            assert name in defined, f"{title}: no service exposes {name}"
            unknown = matchers - defined[name] - metrics.TARGET_LABELS
            assert not unknown, f"{title}: {name} has no label {sorted(unknown)}"
            labels |= defined[name]
        assert query.grouping <= labels, f"{title}: groups by {sorted(query.grouping - labels)}"
        if "histogram_quantile" in expr:
            assert all(n.endswith("_bucket") for n in query.series), f"{title}: quantile of non-buckets"
            assert "le" in query.grouping, f"{title}: histogram_quantile needs `by (le, ...)`"


def test_the_dashboard_shows_what_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    shown = {name for _, expr in queries(dashboard) for name in promql.read(expr).series}
    missing = {what for name, what in MUST_SHOW.items() if name not in shown}
    assert not missing, f"the dashboard does not show {sorted(missing)}"
    failures = [e for _, e in queries(dashboard) if "imgate_runs_finished_total" in e and "category" in e]
    assert any('outcome="failed"' in e for e in failures), "failures by category, failed runs only"


def test_the_bus_metrics_prefix_is_the_routers() -> None:
    # The router names the prefix of FastStream's metrics; the dashboard's imgate_bus_* follow it.
    assert re.search(rf"metrics_prefix\s*=\s*\"{metrics.BUS_PREFIX}\"", ROUTER_MAIN.read_text())


def test_the_query_reader_catches_a_wrong_name_or_label() -> None:
    """The checks above, on queries that must fail them."""
    defined = metrics.defined()
    misspelt = promql.read('sum(rate(imgate_inbound_message_total{platform=~"$platform"}[5m]))')
    assert misspelt.series == {"imgate_inbound_message_total"} and misspelt.series - defined.keys()
    wrong_label = promql.read('sum(rate(imgate_runs_finished_total{status="failed"}[5m]))')
    assert wrong_label.selectors[0][1] - defined["imgate_runs_finished_total"] == {"status"}
    grouped = promql.read("histogram_quantile(0.99, sum by (le, route) (rate(x_bucket[5m]))) or vector(0)")
    assert grouped.series == {"x_bucket"} and grouped.grouping == {"le", "route"}
    in_value = promql.read('sum(rate(imgate_platform_api_calls_total{api=~".*/card/(x|y)"}[1m]))')
    assert in_value.series == {"imgate_platform_api_calls_total"}
