"""What the uv workspace provides: members, their import packages, and the env names they read."""

import importlib
import importlib.util
import tomllib
from functools import cache
from pathlib import Path

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]

# The settings class each deployable workload reads its environment with (imported when asked
# for, so a service being edited breaks only the tests that read its settings).
SETTINGS = {
    "connector": "imgate_connector.settings:ConnectorSettings",
    "router": "imgate_router.settings:RouterSettings",
    "agent-runner": "imgate_runner.settings:RunnerSettings",
    "admin-api": "imgate_admin.settings:AdminSettings",
    "migrate": "imgate_common.settings:CommonSettings",
}


def settings_class(workload: str) -> type[BaseSettings]:
    module, _, name = SETTINGS[workload].partition(":")
    found = getattr(importlib.import_module(module), name)
    assert issubclass(found, BaseSettings)
    return found


def _toml(path: Path) -> dict:
    return tomllib.loads(path.read_text())


@cache
def members() -> dict[str, Path]:
    """Workspace package name → its directory."""
    root = _toml(ROOT / "pyproject.toml")
    found = {}
    for member in root["tool"]["uv"]["workspace"]["members"]:
        found[_toml(ROOT / member / "pyproject.toml")["project"]["name"]] = ROOT / member
    return found


def _requirement_name(requirement: str) -> str:
    for stop in "<>=!~;[ ":
        requirement = requirement.split(stop, 1)[0]
    return requirement.strip().lower()


def workspace_closure(package: str) -> set[str]:
    """`package` and every workspace member it depends on, directly or not."""
    seen: set[str] = set()
    pending = [package]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        project = _toml(members()[name] / "pyproject.toml")["project"]
        pending += [d for d in map(_requirement_name, project.get("dependencies", [])) if d in members()]
    return seen


def import_packages(package: str) -> set[str]:
    """Top-level import names that a workspace member's wheel installs."""
    config = _toml(members()[package] / "pyproject.toml")
    return {Path(p).name for p in config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]}


def importable_from(package: str) -> set[str]:
    """Top-level import names available in a venv built for `package` (its members included)."""
    return set().union(*(import_packages(name) for name in workspace_closure(package)))


# The workspace package each service's image runs.
SERVICE_PACKAGES = {
    "connector": "imgate-connector",
    "router": "imgate-router",
    "agent-runner": "imgate-agent-runner",
    "admin-api": "imgate-admin-api",
}


@cache
def secret_readers() -> frozenset[str]:
    """The services whose code opens the key ring (imgate_common.channels.load_secret_box, or
    `ServiceRuntime.secret_box` in a lifespan) to decrypt stored secrets: each needs
    IMGATE_SECRET_KEYS, the same ring the admin API writes with."""
    return frozenset(
        service
        for service, package in SERVICE_PACKAGES.items()
        if any("secret_box(" in p.read_text() for p in members()[package].rglob("*.py"))
    )


# Workloads that set up tracing (imgate_common.telemetry.configure_tracing), and so read
# OpenTelemetry's own OTEL_* variables through the SDK and its exporters.
TRACED = frozenset({"connector", "router", "agent-runner", "admin-api"})


@cache
def otel_env_names() -> frozenset[str]:
    """The OTEL_* variables the OpenTelemetry SDK declares (exporter, endpoint, protocol, ...)."""
    import opentelemetry.environment_variables as api
    import opentelemetry.sdk.environment_variables as sdk

    return frozenset(
        value
        for module in (api, sdk)
        for name, value in vars(module).items()
        if name.startswith("OTEL_") and isinstance(value, str)
    )


def env_names(workload: str) -> set[str]:
    """Environment variable names a workload reads: its settings' (pydantic-settings ignores
    case), the connector's platforms' own, plus OpenTelemetry's where the workload traces."""
    classes = [settings_class(workload)]
    if workload == "connector":
        from imgate_connector.platforms.registry import ADAPTERS

        classes += [a.environment for a in ADAPTERS.values() if a.environment is not None]
    names = set().union(*(settings_env_names(c) for c in classes))
    if workload in TRACED:
        names |= otel_env_names()
    return names


def settings_env_names(settings: type[BaseSettings]) -> set[str]:
    prefix = settings.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add(f"{prefix}{field_name}".upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
    return names


def metrics_port(workload: str, env: dict[str, object]) -> int:
    """The port a service serves Prometheus /metrics on, given the variables it is started with:
    the admin API on its HTTP port, the others on a port of their own (`<PREFIX>METRICS_PORT`)."""
    settings = settings_class(workload)
    if workload == "admin-api":
        return int(str(env.get("ADMIN_PORT", settings.model_fields["port"].default)))
    name = f"{settings.model_config.get('env_prefix', '')}METRICS_PORT"
    return int(str(env.get(name, settings.model_fields["metrics_port"].default)))


def module_of(argv: list[str]) -> str | None:
    """The module of a `python -m MODULE ...` command line."""
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1] == "-m":
        return argv[2]
    return None


def module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
