"""A channel that maps its users through LDAP (or an ERP lookup) answers in the shipped
deployments: in Compose and Kubernetes the router holds the key ring the admin API encrypts the
bind password with, and, with the directory-egress component, its network policy lets it reach
the directory. Checked on the rendered configuration, offline: settings built from the
interpolated or rendered environment, policies evaluated as the API defines them."""

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography.fernet import Fernet

from imgate_common.platform_config import LdapUserMapping, parse_user_mapping
from imgate_common.secrets import SecretBox, UnreadableSecrets
from tests.deploy import kustomize
from tests.deploy.kustomize import find, pod_templates
from tests.deploy.network_policy import Endpoint, Policies
from tests.deploy.test_compose import COMPOSE, VARIABLE
from tests.deploy.test_k8s_manifests import env_of
from tests.deploy.workspace import ROOT, secret_readers, settings_class

FIXTURE = Path(__file__).parent / "overlays" / "directory-egress"
# Directories in the subnet the fixture narrows the component to, as docs/deploy.md shows.
LDAP_URL = "ldap://10.20.40.10:389"
LDAPS_URL = "ldaps://10.20.40.10"
ERP_URL = "https://10.20.40.11/lookup"
OUTSIDE = Endpoint.external("10.99.0.1")
METADATA = Endpoint.external("169.254.169.254")
BIND_PASSWORD = "bind-password-for-the-test"


def target(url: str) -> tuple[Endpoint, int]:
    parts = urlsplit(url)
    default = {"ldap": 389, "ldaps": 636, "https": 443}[parts.scheme]
    return Endpoint.external(str(parts.hostname)), parts.port or default


def ldap_mapping(box: SecretBox) -> tuple[dict[str, Any], str]:
    """What the admin API stores for an LDAP-mapped channel: the public part and the encrypted one."""
    mapping = LdapUserMapping.model_validate(
        {"mode": "ldap", "url": LDAP_URL, "bind_dn": "cn=imgate,dc=example", "base_dn": "dc=example"}
        | {"bind_password": BIND_PASSWORD}
    )
    public, secrets = mapping.split()
    return public, box.encrypt_json(secrets)


def settings_from(monkeypatch: pytest.MonkeyPatch, workload: str, env: dict[str, str]) -> Any:
    """The workload's settings as its process would read them from `env` (and nothing else
    that decides the key ring)."""
    monkeypatch.delenv("IMGATE_SECRET_KEYS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings_class(workload)()


def router_reads_ldap_secrets(
    monkeypatch: pytest.MonkeyPatch, admin_env: dict[str, str], router_env: dict[str, str]
) -> None:
    """What the admin API (with `admin_env`) stored for an LDAP mapping, the router (with
    `router_env`) reads at start and uses: the key ring is the same."""
    public, token = ldap_mapping(SecretBox.from_settings(settings_from(monkeypatch, "admin-api", admin_env)))
    router = settings_from(monkeypatch, "router", router_env)
    # As the router builds its key ring at start (load_secret_box), with what the database holds.
    box = SecretBox.from_settings(router, {"channels.user_mapping_secrets_enc#1": token})
    mapping = parse_user_mapping(public, box.decrypt_json(token))
    assert isinstance(mapping, LdapUserMapping)
    assert mapping.bind_password.get_secret_value() == BIND_PASSWORD


SECRET = {
    "secret-keys": f"{Fernet.generate_key().decode()},{Fernet.generate_key().decode()}",
    "database-url": "postgresql://imgate:pw@db:5432/imgate",
    "redis-url": "redis://redis:6379/0",
    "admin-token": "t",
}


def k8s_env(objects: tuple[dict[str, Any], ...], workload: str) -> dict[str, str]:
    """A rendered container's environment, its Secret references resolved from SECRET."""
    env = env_of(objects, pod_templates(objects)[workload])
    return {k: SECRET[v["secretKeyRef"]["key"]] if isinstance(v, dict) else str(v) for k, v in env.items()}


def rendered_router_reads_ldap_secrets(
    monkeypatch: pytest.MonkeyPatch, objects: tuple[dict[str, Any], ...]
) -> None:
    router_reads_ldap_secrets(monkeypatch, k8s_env(objects, "admin-api"), k8s_env(objects, "router"))


def compose_env(workload: str) -> dict[str, str]:
    """A compose service's environment as `docker compose` interpolates it from a filled-in .env."""
    dotenv = {"IMGATE_SECRET_KEYS": SECRET["secret-keys"], "POSTGRES_PASSWORD": "pw", "ADMIN_TOKEN": "t"}
    service = yaml.safe_load(COMPOSE.read_text())["services"][workload]

    def interpolate(match: re.Match[str]) -> str:
        if match.group("name") in dotenv:
            return dotenv[match.group("name")]
        assert match.group("op") in (":-", "-"), f"{match.group('name')} must be set"
        return match.group("arg")

    return {k: VARIABLE.sub(interpolate, str(v)) for k, v in service["environment"].items()}


@pytest.fixture(autouse=True)
def data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Where a service would make its local key: a fresh directory, so none is found there."""
    monkeypatch.setenv("IMGATE_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("overlay", kustomize.OVERLAYS)
def test_the_rendered_router_decrypts_what_the_admin_api_encrypted(
    monkeypatch: pytest.MonkeyPatch, overlay: str
) -> None:
    rendered_router_reads_ldap_secrets(monkeypatch, kustomize.overlay(overlay))


def test_the_compose_router_decrypts_what_the_admin_api_encrypted(monkeypatch: pytest.MonkeyPatch) -> None:
    router_reads_ldap_secrets(monkeypatch, compose_env("admin-api"), compose_env("router"))


def test_a_router_without_the_key_ring_refuses_to_start_instead_of_making_one_up(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    """What the manifests used to render: no IMGATE_SECRET_KEYS for the router."""
    objects = copy.deepcopy(kustomize.overlay("prod"))  # the render is cached for other tests
    router = next(o for o in find(objects, "Deployment") if o["metadata"]["name"] == "router")
    spec = router["spec"]["template"]["spec"]["containers"][0]
    spec["env"] = [e for e in spec["env"] if e["name"] != "IMGATE_SECRET_KEYS"]
    with pytest.raises(UnreadableSecrets, match="IMGATE_SECRET_KEYS"):
        rendered_router_reads_ldap_secrets(monkeypatch, objects)
    assert not (data_dir / "secret.key").exists()


def network(objects: tuple[dict[str, Any], ...], namespace: str) -> tuple[Policies, dict[str, Endpoint]]:
    policies = Policies(namespace, find(objects, "NetworkPolicy"))
    pods = {n: Endpoint.pod(namespace, t["metadata"]["labels"]) for n, t in pod_templates(objects).items()}
    return policies, pods


def test_with_the_component_the_router_reaches_the_configured_directories_only() -> None:
    objects = kustomize.render_dir(FIXTURE)
    policies, pods = network(objects, "imgate")
    for url in (LDAP_URL, LDAPS_URL, ERP_URL):
        host, port = target(url)
        assert policies.can_connect(pods["router"], host, port), url
        # Nobody else gains the directories: the connector, runner and admin API never call them.
        for other in ("connector", "agent-runner", "admin-api", "migrate"):
            assert not policies.can_connect(pods[other], host, port), (other, url)
    for port in (389, 636, 443):
        assert not policies.can_connect(pods["router"], OUTSIDE, port)
        assert not policies.can_connect(pods["router"], METADATA, port)
    assert not policies.can_connect(pods["router"], target(LDAP_URL)[0], 80)


@pytest.mark.parametrize("overlay", kustomize.OVERLAYS)
def test_without_the_component_the_router_reaches_no_directory(overlay: str) -> None:
    policies, pods = network(kustomize.overlay(overlay), {"dev": "imgate-dev", "prod": "imgate"}[overlay])
    for url in (LDAP_URL, LDAPS_URL, ERP_URL):
        assert not policies.can_connect(pods["router"], *target(url)), url


def test_the_component_is_documented_as_the_fixture_uses_it() -> None:
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "components/directory-egress" in docs
    assert "directory-egress" in (FIXTURE / "kustomization.yaml").read_text()
    assert "router" in secret_readers()
