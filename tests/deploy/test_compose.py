"""docker-compose.yml, checked without a Docker engine: the Compose schema, and everything it names."""

import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import pytest
import yaml

from tests.deploy import dockerfile
from tests.deploy.workspace import ROOT, env_names, module_exists, module_of, secret_readers

COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
COMPOSE_SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
ENV_EXAMPLE = ROOT / "deploy" / "compose" / "env.example"
IMGATE_SERVICES = ("connector", "router", "agent-runner", "admin-api")
OBSERVABILITY = ("jaeger", "prometheus", "grafana")
REQUIRED_SECRETS = {"POSTGRES_PASSWORD", "IMGATE_SECRET_KEYS", "ADMIN_TOKEN"}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # PyYAML resolves the `<<` merge keys the file uses, as compose does.
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def with_defaults(value: str) -> str:
    """Interpolate the way compose does when the environment sets nothing."""
    return VARIABLE.sub(lambda m: m.group("arg") if m.group("op") in (":-", "-") else "<set>", value)


def test_the_vendored_schema_is_the_recorded_copy() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == COMPOSE_SCHEMA_SHA256


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_the_schema_check_rejects_a_misspelt_key(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["router"]["stop_grace_periods"] = "20s"
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))
    assert not validator.is_valid(broken)


def test_the_whole_product_is_there(services: dict[str, Any]) -> None:
    assert {*IMGATE_SERVICES, "nats", "redis", "postgres", "migrate", "imsim"} <= services.keys()
    assert set(OBSERVABILITY) <= services.keys()


def test_every_pulled_image_is_pinned_to_a_version(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        repository, _, tag = service["image"].rpartition(":")
        assert repository and "/" not in tag, f"{name}: {service['image']} has no tag"
        assert tag != "latest" and re.match(r"v?\d", tag), f"{name}: {service['image']} is not pinned"


def test_nats_runs_jetstream_on_a_volume(compose: dict[str, Any], services: dict[str, Any]) -> None:
    nats = services["nats"]
    command = nats["command"]
    assert "--jetstream" in command or "-js" in command
    store = command[command.index("--store_dir") + 1]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in nats["volumes"]}
    assert volumes[store] in compose["volumes"], "the JetStream store must be a named volume"


@pytest.mark.parametrize("name", [*IMGATE_SERVICES])
def test_services_start_after_migration_and_healthy_stores(services: dict[str, Any], name: str) -> None:
    depends = services[name]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["nats"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_migration_is_a_one_shot_job(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert module_of(migrate["command"]) == "imgate_common.db.migrate"
    assert migrate["restart"] == "no"


def build_targets(service: dict[str, Any]) -> list[str]:
    """The target, and for `${VAR:-default}` targets also the documented alternative."""
    target = service["build"]["target"]
    resolved = [with_defaults(target)]
    if "IMGATE_RUNNER_TARGET" in target:
        resolved.append("agent-runner-local")
    return resolved


def test_every_build_context_and_target_exists(services: dict[str, Any]) -> None:
    built = {name: s for name, s in services.items() if "build" in s}
    assert set(IMGATE_SERVICES) <= built.keys()
    for name, service in built.items():
        context = ROOT / with_defaults(service["build"]["context"])
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        recipe = context / service["build"].get("dockerfile", "Dockerfile")
        assert recipe.is_file(), f"{name}: no {recipe}"
        stages = dockerfile.read(recipe).stages
        for target in build_targets(service):
            assert target in stages, f"{name}: the Dockerfile has no target {target!r}"


def test_every_command_names_a_module_the_image_holds(services: dict[str, Any]) -> None:
    image = dockerfile.read()
    for name, service in services.items():
        if "build" not in service:
            continue
        for target in build_targets(service):
            cmd = image.effective(target, "CMD")
            assert cmd is not None, f"{target} has no CMD"
            argv = service.get("command") or cmd.exec_form()
            module = module_of([with_defaults(str(a)) for a in argv])
            if module is None:  # e.g. `python /opt/imgate/seed_demo.py`, checked below
                continue
            assert module.split(".")[0] in image.importable(target), f"{name}: {module} not in {target}"
            assert module_exists(module), f"{name}: no module {module}"


def test_every_bind_mount_source_exists(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"


def test_the_demo_seed_script_is_what_the_demo_service_runs(services: dict[str, Any]) -> None:
    seed = services["demo-seed"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in seed["volumes"]}
    script = seed["command"][-1]
    assert script in mounts and (ROOT / mounts[script]).is_file()
    compile((ROOT / mounts[script]).read_text(), mounts[script], "exec")
    imsim_apps = [a for a in services["imsim"]["command"] if ":" in str(a) and "/" not in str(a)]
    assert imsim_apps == ["demo-client:demo-secret"], "the seed script's default app credentials"


def test_every_dependency_is_a_service_with_a_health_check_when_one_is_awaited(
    services: dict[str, Any],
) -> None:
    image = dockerfile.read()
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if how["condition"] != "service_healthy":
                continue
            other = services[dependency]
            if "healthcheck" in other:
                assert not other["healthcheck"].get("disable"), f"{dependency} has its check disabled"
            else:
                target = with_defaults(other["build"]["target"])
                assert image.effective(target, "HEALTHCHECK") is not None, f"{dependency} has no check"


@pytest.mark.parametrize("name", [*IMGATE_SERVICES, "migrate"])
def test_every_variable_given_to_a_service_is_one_it_reads(services: dict[str, Any], name: str) -> None:
    unknown = set(services[name]["environment"]) - env_names(name)
    assert not unknown, f"{name} would ignore {sorted(unknown)}"


def test_secrets_come_from_the_environment_never_from_the_file(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|_KEYS?$", key):
                assert VARIABLE.fullmatch(str(value)), f"{name}: {key} is not taken from the environment"
        for key in ("DATABASE_URL",):
            value = (service.get("environment") or {}).get(key)
            if value is not None:
                assert "${POSTGRES_PASSWORD" in value


def test_required_secrets_are_exactly_the_documented_ones() -> None:
    text = COMPOSE.read_text()
    required = {m.group("name") for m in VARIABLE.finditer(text) if m.group("op") in (":?", "?")}
    assert required == REQUIRED_SECRETS
    example = ENV_EXAMPLE.read_text()
    for name in {m.group("name") for m in VARIABLE.finditer(text)}:
        assert re.search(rf"^#? ?{name}=", example, re.M), f"{name} is not in deploy/compose/env.example"
    for name in REQUIRED_SECRETS:
        assert re.search(rf"^{name}=$", example, re.M), f"env.example must leave {name} empty"


def test_every_service_that_decrypts_secrets_gets_the_one_key_ring(services: dict[str, Any]) -> None:
    # The router among them: it decrypts the LDAP bind password and ERP key of user mappings.
    assert {"router", "admin-api"} <= secret_readers()
    holders = {name for name, s in services.items() if "IMGATE_SECRET_KEYS" in (s.get("environment") or {})}
    assert holders == secret_readers()
    rings = {services[name]["environment"]["IMGATE_SECRET_KEYS"] for name in holders}
    assert len(rings) == 1 and rings.pop().startswith("${IMGATE_SECRET_KEYS:?")


def test_a_single_nats_node_means_single_replica_streams(services: dict[str, Any]) -> None:
    for name in IMGATE_SERVICES:
        assert services[name]["environment"]["IMGATE_STREAM_REPLICAS"] == "1"


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


def test_the_runner_gets_longer_than_its_drain_to_stop(services: dict[str, Any]) -> None:
    runner = services["agent-runner"]
    drain = float(runner["environment"]["RUNNER_DRAIN_TIMEOUT_S"])
    assert seconds(runner["stop_grace_period"]) >= drain + 10


def test_every_published_port_is_on_loopback_by_default(services: dict[str, Any]) -> None:
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"admin-api", "imsim", *OBSERVABILITY}
    for name in published:
        for mapping in services[name]["ports"]:
            assert with_defaults(mapping).startswith("127.0.0.1:"), f"{name}: {mapping}"


def test_imsim_is_only_in_the_demo_profile(services: dict[str, Any]) -> None:
    assert services["imsim"]["profiles"] == ["demo"]
    assert services["demo-seed"]["profiles"] == ["demo"]
    assert all("profiles" not in services[name] for name in IMGATE_SERVICES)


def test_the_observability_stack_is_always_on(services: dict[str, Any]) -> None:
    # The services send traces to jaeger by default: were it in a profile, every default
    # `docker compose up` would log failed exports.
    assert all("profiles" not in services[name] for name in OBSERVABILITY)


def test_the_services_send_traces_to_jaeger_over_otlp(services: dict[str, Any]) -> None:
    for name in IMGATE_SERVICES:
        env = {k: with_defaults(str(v)) for k, v in services[name]["environment"].items()}
        assert env["OTEL_TRACES_EXPORTER"] == "otlp"
        endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        # Jaeger's OTLP receivers: gRPC on 4317, HTTP on 4318; the endpoint is the bare base.
        assert (endpoint.hostname, endpoint.port) == ("jaeger", {"grpc": 4317}.get(protocol, 4318))
        assert endpoint.scheme == "http" and endpoint.path in ("", "/")
        assert env["IMGATE_TRACE_CONTENT"] == "false", "message text stays off spans by default"
        # The scraper reaches the metrics port over the compose network.
        assert env.get("IMGATE_METRICS_HOST", "0.0.0.0") == "0.0.0.0"
    assert "jaeger" in services
