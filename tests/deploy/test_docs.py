"""docs/deploy.md names files and objects that exist."""

import re

from tests.deploy.kustomize import KUSTOMIZATIONS, one, overlay
from tests.deploy.workspace import ROOT

DOCS = ROOT / "docs" / "deploy.md"
PATH = re.compile(r"`((?:deploy|tests|docs|bench)/[\w./-]+|Dockerfile|docker-compose\.yml|\.dockerignore)`")


def test_every_path_the_guide_names_exists() -> None:
    for path in PATH.findall(DOCS.read_text()):
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"


def test_every_kubectl_apply_names_an_overlay() -> None:
    for path in re.findall(r"kubectl apply -k (\S+)", DOCS.read_text()):
        assert path.removeprefix("deploy/k8s/") in KUSTOMIZATIONS


def test_the_commands_use_the_namespaces_the_overlays_set() -> None:
    text = DOCS.read_text()
    for env, namespace in (("dev", "imgate-dev"), ("prod", "imgate")):
        assert one(overlay(env), "Deployment", "router")["metadata"]["namespace"] == namespace
        assert f"create namespace {namespace}\n" in text
